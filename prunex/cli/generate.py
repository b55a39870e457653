"""`prunex generate`: text from a checkpoint or model (PyTorch) or an exported dir (ONNX Runtime)."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

from prunex.cli.options import Json, KvBudget, KvTokens, Policy
from prunex.errors import PrunexError


def generate(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir (prunex export: ONNX Runtime), pruning checkpoint dir or model name (PyTorch); "
        "default: built-in."
    ),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text; repeat for a batch."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    chat: bool = typer.Option(False, help="Wrap each prompt as a user message in the chat template."),
    stream: bool = typer.Option(False, help="Exported dirs: print the text as it is generated (one prompt)."),
    temperature: float = typer.Option(0.0, min=0.0, help="Exported dirs: 0 is greedy; > 0 samples."),
    top_k: int = typer.Option(0, min=0, help="Exported dirs: sample among the k most likely tokens (0: all)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Exported dirs: nucleus sampling mass."),
    seed: Optional[int] = typer.Option(None, help="Exported dirs: sampling seed (same seed, same text)."),
    stop: list[str] = typer.Option([], "--stop", help="Exported dirs: stop string (repeatable)."),
    device: str = typer.Option("auto", help="Exported dirs: auto, cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="Exported dirs: ONNX Runtime threads (0: as torch)."),
    policy: Policy = None,
    kv_budget: KvBudget = None,
    kv_tokens: KvTokens = None,
    as_json: Json = False,
) -> None:
    """Generate with the K/V cache pruned step by step: ONNX Runtime for an exported dir (sampling, streaming,
    batching), PyTorch (greedy) for a checkpoint or model name. --policy adds to SOURCE's own decisions;
    --kv-budget is a fraction of the longest prompt + --max-new-tokens."""
    from prunex.loading import resolve_source

    if resolve_source(source).kind == "exported":
        from prunex.runtime.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, stop=list(stop))
        generate_exported(source, prompt, chat=chat, params=params, stream=stream, as_json=as_json,
                          device=device, threads=threads or None, policy=policy, kv_budget=kv_budget,
                          kv_tokens=kv_tokens)
    else:
        sampling_given = temperature or top_k or top_p < 1.0 or seed is not None or stop or stream
        if sampling_given:
            raise PrunexError("sampling, --stop and --stream run on exported dirs: `prunex export` first")
        generate_torch(source, prompt, chat=chat, max_new_tokens=max_new_tokens, as_json=as_json, policy=policy,
                       kv_budget=kv_budget, kv_tokens=kv_tokens)


def _messages_or_text(prompt: str, chat: bool):
    return [{"role": "user", "content": prompt}] if chat else prompt

def generate_exported(source: str, prompts: list[str], *, chat: bool, params, stream: bool, as_json: bool,
                      device: str, threads: int | None, policy: str | None = None, kv_budget: float | None = None,
                      kv_tokens: int | None = None) -> None:
    """Generate through ONNX Runtime; prints text (streamed for one prompt with --stream) and a stats line.
    `policy` (window, sinks, h2o, tova) at `kv_budget`/`kv_tokens` bounds the cache on top of the graph's decisions."""
    from prunex.prune.policy_spec import PolicySpec
    from prunex.runtime.runtime import Runtime, load_tokenizer

    spec = None
    if policy is not None or kv_budget is not None or kv_tokens is not None:
        tokenizer = load_tokenizer(source)
        longest = max(len(tokenizer(p)["input_ids"]) for p in prompts)
        spec = PolicySpec.from_options(policy, kv_budget, kv_tokens, longest + params.max_new_tokens)
    runtime = Runtime(source, device=device, threads=threads, max_batch=max(len(prompts), 1), policy=spec)
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
    from prunex.cli.options import budgeted_policy
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
