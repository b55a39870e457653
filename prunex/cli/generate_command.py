"""The function behind `prunex generate`: PyTorch for checkpoints and model names, the Runtime for exported dirs."""

from __future__ import annotations

import json
import time

import typer


def _messages_or_text(prompt: str, chat: bool):
    return [{"role": "user", "content": prompt}] if chat else prompt


def generate_exported(source: str, prompts: list[str], *, chat: bool, params, stream: bool, as_json: bool,
                      device: str, threads: int | None, policy: str | None = None, kv_budget: float | None = None,
                      kv_tokens: int | None = None) -> None:
    """Generate through ONNX Runtime; prints text (streamed for one prompt with --stream) and a stats line.
    `policy` (window, sinks, h2o, tova) at `kv_budget`/`kv_tokens` bounds the cache on top of the graph's decisions."""
    from prunex.cli.policy_options import runtime_budget
    from prunex.prune.training_free import training_free_policy
    from prunex.runtime.runtime import Runtime, load_tokenizer

    run_policy = None
    if policy is not None or kv_budget is not None or kv_tokens is not None:
        tokenizer = load_tokenizer(source)
        longest = max(len(tokenizer(p)["input_ids"]) for p in prompts)
        tokens = runtime_budget(policy, kv_budget, kv_tokens, longest + params.max_new_tokens)
        run_policy = training_free_policy(policy, tokens)
    runtime = Runtime(source, device=device, threads=threads, max_batch=max(len(prompts), 1), policy=run_policy)
    if runtime.device_note:
        typer.echo(f"[device: cpu, because {runtime.device_note}]", err=True)
    started = time.perf_counter()
    if stream and not as_json:
        if len(prompts) != 1:
            raise typer.BadParameter("--stream takes one --prompt")
        if not chat:
            typer.echo(prompts[0], nl=False)
        for piece in runtime.stream(_messages_or_text(prompts[0], chat), params):
            typer.echo(piece, nl=False)
        typer.echo()
        completions = None
    else:
        completions = runtime.generate([_messages_or_text(p, chat) for p in prompts], params)
    seconds = time.perf_counter() - started
    stats = runtime.last_stats
    if as_json:
        rows = [{"prompt": p, "text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                for p, c in zip(prompts, completions)]
        payload = {**rows[0], "rows": rows} if len(rows) == 1 else {"rows": rows}
        typer.echo(json.dumps({**payload, "kv_kept_fraction": stats["kv_kept_fraction"],
                               "kv_bytes": stats["kv_bytes"], "dense_kv_bytes": stats["dense_kv_bytes"],
                               "tokens_per_s": stats["tokens"] / seconds, "device": runtime.device}))
        return
    if completions is not None:
        for p, c in zip(prompts, completions):
            typer.echo(c.text if chat else f"{p}{c.text}")
    typer.echo(
        f"[{stats['tokens']} tokens in {seconds:.2f} s: {stats['tokens'] / seconds:.1f} tok/s on {runtime.device}; "
        f"kv kept {stats['kv_kept_fraction']:.3f}: {stats['kv_bytes'] / 2**20:.2f} MiB vs "
        f"{stats['dense_kv_bytes'] / 2**20:.2f} MiB dense (peak {stats['kv_peak_allocated_bytes'] / 2**20:.2f} MiB "
        f"allocated)]", err=True,
    )


def generate_torch(source: str | None, prompts: list[str], *, chat: bool, max_new_tokens: int, as_json: bool,
                   policy: str | None = None, kv_budget: float | None = None, kv_tokens: int | None = None) -> None:
    """Greedy generation in PyTorch with physical KV removal (checkpoints and model names); `policy` at
    `kv_budget`/`kv_tokens` (over the longest prompt + max_new_tokens) replaces or caps the model's own."""
    from prunex.cli.policy_options import budgeted_policy
    from prunex.data.prompts import encode_prompt
    from prunex.loading import load_lm

    lm = load_lm(source)
    tokenizer = lm.tokenizer
    ids = [encode_prompt(tokenizer, _messages_or_text(p, chat)) for p in prompts]
    if policy is not None or kv_budget is not None or kv_tokens is not None:
        context = max(len(i) for i in ids) + max_new_tokens
        lm.policy = budgeted_policy(lm.policy, policy, kv_budget, kv_tokens, context)
    result = lm.generate(ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    outputs = [tokenizer.decode(ids, skip_special_tokens=True) for ids in result.token_ids]
    if as_json:
        rows = [{"prompt": p, "text": o, "token_ids": ids} for p, o, ids in zip(prompts, outputs, result.token_ids)]
        payload = {**rows[0], "rows": rows} if len(rows) == 1 else {"rows": rows}
        typer.echo(json.dumps({**payload, "kv_kept_fraction": result.kv_kept_fraction,
                               "kv_bytes": result.kv_bytes, "dense_kv_bytes": result.dense_kv_bytes}))
        return
    for p, o in zip(prompts, outputs):
        typer.echo(o if chat else f"{p}{o}")
    typer.echo(
        f"[kv kept {result.kv_kept_fraction:.3f}: {result.kv_bytes / 2**20:.2f} MiB vs "
        f"{result.dense_kv_bytes / 2**20:.2f} MiB dense]", err=True,
    )
