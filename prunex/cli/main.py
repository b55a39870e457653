"""The `prunex` command line: thin commands that parse, build a config and call the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from prunex.errors import PrunexError

app = typer.Typer(
    help="prunex: train, export, quantize and run transformers with learned token pruning.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
eval_app = typer.Typer(help="Measure quality: perplexity, accuracy (encoders).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
bench_app = typer.Typer(help="Measure speed side by side in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _clear_out(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse a non-empty --out unless --force, which empties it (training writes into it as it goes), or
    --resume with the training state an interrupted run left there."""
    from prunex.export.folder import prepare_out
    from prunex.train.parallel import launched_as_main
    from prunex.train.resume import STATE_FILE

    if not launched_as_main():  # a data-parallel launch: the main process checks and prepares --out
        return
    if not resume:
        prepare_out(out, force, clear=True)
        return
    if force:
        raise PrunexError("--resume goes on with what --out holds and --force empties it: pass one of them")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
        raise PrunexError(
            f"{out} holds no saved training state ({STATE_FILE}) to resume: its run finished or it was written by "
            "something else; choose another --out, or pass --force to start over"
        )


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Folder for the pruning checkpoint."),
    method: str = typer.Option("dcp", help="dcp: decoder KV pruning; ltp: encoder token pruning."),
    model: str = typer.Option("smollm2", help="Packaged model (smollm2, tiny-llama, tiny-gpt2) or a HF dir."),
    text: str = typer.Option("wikipedia", help="Training text: wikipedia, bbc, or a UTF-8 text file."),
    steps: Optional[int] = typer.Option(
        None, min=1, help="Optimizer steps (dcp: 200; ltp: per stage, default by epochs with early stopping)."
    ),
    context: int = typer.Option(512, min=8, help="Tokens per training sequence."),
    batch_size: Optional[int] = typer.Option(
        None, min=1, help="Sequences per step (dcp: 1; ltp: 32 up to 128 tokens, else 8)."
    ),
    sparsity_weight: float = typer.Option(0.3, min=0.0, help="Weight of the sparsity loss (mean keep prob)."),
    train_what: str = typer.Option("heads", "--train", help="heads: new parameters only; all: whole model."),
    loss: str = typer.Option("lm", help="lm: next-token cross-entropy; distill: KL from the dense model."),
    lr: Optional[float] = typer.Option(
        None, help="Learning rate of the pruning parameters (dcp: 1e-3; ltp: the thresholds', 1e-2)."
    ),
    sinks: int = typer.Option(4, min=0, help="First tokens never dropped (attention sinks); 0 = pure DCP."),
    recent: int = typer.Option(0, min=0, help="Tokens protected while among the last N (0 = pure DCP)."),
    init_bias: float = typer.Option(5.0, help="Initial keep-logit bias (large = keep all at first)."),
    interaction_dim: int = typer.Option(64, min=1, help="Width r of the interaction projections."),
    threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default)."),
    device: str = typer.Option("auto", help="auto (CUDA when PyTorch sees a GPU), cpu or cuda."),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
    resume: bool = typer.Option(
        False, help="Go on from the state an interrupted run saved in --out (every 5 minutes; same options)."
    ),
    save_every: float = typer.Option(300.0, min=0.0, help="Seconds between saves of the resume state in --out."),
    task: str = typer.Option("bbc", help="ltp: bbc, rotten-tomatoes, or a text/label CSV or JSONL."),
    stage: str = typer.Option("all", help="ltp: base, soft, hard (--model: previous stage dir), all."),
    lam: Optional[float] = typer.Option(
        None, "--lambda", min=0.0, help="ltp, experts: a fixed mask loss weight instead of --target-flops."
    ),
    target_flops: Optional[float] = typer.Option(
        None, min=0.0, max=1.0,
        help="ltp: relative FLOPs wanted on validation, reached from under (default 0.5; off with --lambda).",
    ),
    model_lr: Optional[float] = typer.Option(None, min=0.0, help="ltp: encoder learning rate (1e-4)."),
    epochs: Optional[float] = typer.Option(None, min=0.0, help="ltp: most epochs of the base stage (2)."),
    prune_epochs: Optional[float] = typer.Option(
        None, min=0.0, help="ltp: epochs of the soft and of the hard stage (0.25, at most 100k tokens each)."
    ),
    distill: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="ltp: hard stage weight of distilling the dense model (0.5; 0: off)."
    ),
    min_tokens: Optional[int] = typer.Option(None, min=1, help="ltp: tokens a row always keeps (4)."),
) -> None:
    """Fine-tune a model so that it learns which tokens to drop; writes pruning.safetensors + pruning.json.
    Data-parallel on N processes when launched by `torchrun --nproc_per_node N -m prunex train ...` or
    `accelerate launch`."""
    from prunex.config import DCPConfig, TrainConfig
    from prunex.train.dcp_trainer import train_dcp
    from prunex.train.parallel import launched_as_main

    if method == "ltp":
        from prunex.cli.ltp_commands import train_ltp_command

        return train_ltp_command(
            out=out, model="minilm" if model == "smollm2" else model, task=task, stage=stage, lam=lam, steps=steps,
            context=context, batch_size=batch_size, lr=lr, threads=threads, seed=seed, force=force,
            target_flops=target_flops, model_lr=model_lr, epochs=epochs, prune_epochs=prune_epochs, distill=distill,
            min_tokens=min_tokens, device=device, prepare_out=_clear_out, resume=resume, save_every=save_every,
        )
    if method != "dcp":
        raise PrunexError(f"--method {method!r} is not available; use dcp or ltp")
    _clear_out(out, force, resume)
    config = TrainConfig(
        method=method, model=model, text=text, steps=steps or 200, batch_size=batch_size or 1, context=context,
        lr=1e-3 if lr is None else lr,
        train=train_what, sparsity_weight=sparsity_weight, loss=loss, seed=seed, threads=threads, device=device,
        save_every=save_every,
    )
    dcp = DCPConfig(
        interaction_dim=interaction_dim, init_bias=init_bias, sink_tokens=sinks, recent_tokens=recent
    )
    meta = train_dcp(config, dcp, out, resume=resume)
    figures = meta.training["figures"]["validation"]
    if launched_as_main():
        typer.echo(
            f"wrote {out}: validation perplexity {figures['perplexity']:.2f}, sparsity {figures['sparsity']:.3f}"
        )


@eval_app.command("ppl")
def eval_ppl(
    source: Optional[str] = typer.Argument(
        None, help="Pruning checkpoint dir, model name, or exported dir (ONNX Runtime); default: built-in."
    ),
    text_file: Optional[Path] = typer.Option(None, help="A UTF-8 text file to measure on (instead of --text)."),
    text: str = typer.Option("wikipedia", help="Packaged text: wikipedia or bbc (held-out test split)."),
    split: str = typer.Option("test", help="train, validation or test."),
    context: int = typer.Option(1024, min=8, help="Tokens per window."),
    windows: int = typer.Option(8, min=1, help="Windows to measure (at most)."),
    window: Optional[int] = typer.Option(None, help="Baseline: keep sinks + this many recent tokens (no training)."),
    sinks: int = typer.Option(4, min=0, help="Sink tokens of the --window baseline."),
    policy: Optional[str] = typer.Option(None, help="Training-free policy instead of SOURCE's own: "
                                         "window, sinks, h2o or tova (needs --kv-budget or --kv-tokens)."),
    kv_budget: Optional[float] = typer.Option(None, help="KV budget as the kept fraction of --context's causal "
                                              "entries; without --policy it caps SOURCE's learned policy."),
    kv_tokens: Optional[int] = typer.Option(None, help="KV budget as cached tokens per query and layer."),
    device: str = typer.Option("cpu", help="PyTorch sources: cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Perplexity of SOURCE with pruning, and of its dense base on the same windows, with the sparsity; an
    exported dir (fp32 or int8) runs on ONNX Runtime and reports its perplexity and the KV kept at the end."""
    from prunex.data.text import split_text, token_windows
    from prunex.eval.perplexity import evaluate_perplexity
    from prunex.loading import load_lm, resolve_source
    from prunex.prune.window import WindowPolicy

    if text_file is not None and not text_file.is_file():
        raise PrunexError(f"--text-file {text_file} does not exist")
    corpus = str(text_file) if text_file is not None else text
    budgeted = policy is not None or kv_budget is not None or kv_tokens is not None
    if resolve_source(source).kind == "exported":
        if budgeted:
            raise PrunexError("--policy/--kv-budget measure in PyTorch: pass a checkpoint or model name")
        from prunex.cli.exported_commands import eval_ppl_exported

        eval_ppl_exported(source, corpus, split, context, windows, as_json)
        return
    from prunex.devices import torch_device

    lm = load_lm(source).to(torch_device(device))
    if window is not None:
        if budgeted:
            raise PrunexError("--window is the sinks policy: use --policy sinks --kv-tokens N instead of both")
        lm.policy = WindowPolicy(window=window, sink_tokens=sinks)
    if budgeted:
        from prunex.cli.policy_options import budgeted_policy

        lm.policy = budgeted_policy(lm.policy, policy, kv_budget, kv_tokens, context)
    lm._check_length(context)
    token_ids = token_windows(lm.tokenizer, split_text(corpus, split), context, windows)
    report = evaluate_perplexity(lm, token_ids, show_progress=not as_json)
    result = {"source": source or "built-in", "text": corpus, "split": split, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"perplexity {report.perplexity:.3f} (dense {report.dense_perplexity:.3f}, x{report.ppl_ratio:.3f}), "
            f"sparsity {report.sparsity:.3f}, {report.tokens} tokens in {report.windows} windows of {context}"
        )


@eval_app.command("compare")
def eval_compare(
    source: Optional[str] = typer.Argument(None, help="Pruning checkpoint dir or model name; default: built-in."),
    text_file: Optional[Path] = typer.Option(None, help="A UTF-8 text file (instead of --text)."),
    text: str = typer.Option("wikipedia", help="Packaged text: wikipedia or bbc (held-out test split)."),
    split: str = typer.Option("test", help="train, validation or test."),
    budgets: str = typer.Option("0.1,0.25,0.5", help="Kept fractions to compare at, comma-separated."),
    policies: str = typer.Option("window,sinks,h2o,tova", help="Training-free policies, comma-separated."),
    context: int = typer.Option(1024, min=8, help="Tokens per window."),
    windows: int = typer.Option(4, min=1, help="Windows to measure (at most)."),
    plot: Optional[Path] = typer.Option(None, help="Write perplexity against kept fraction as a PNG."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Perplexity at equal KV budget on the same windows: dense, SOURCE's learned policy (as trained, and
    capped at each budget) and each training-free policy at each budget. Kept = fraction of causal key/value
    entries kept, over layers and positions (as `prunex eval ppl`)."""
    from prunex.data.text import split_text, token_windows
    from prunex.devices import torch_device
    from prunex.eval.compare import compare_policies, plot_comparison
    from prunex.loading import load_lm, resolve_source
    from prunex.prune.training_free import TRAINING_FREE

    if text_file is not None and not text_file.is_file():
        raise PrunexError(f"--text-file {text_file} does not exist")
    if resolve_source(source).kind == "exported":
        raise PrunexError("eval compare runs in PyTorch: pass a checkpoint or model name, not an exported dir")
    try:
        fractions = [float(b) for b in budgets.split(",")]
    except ValueError as err:
        raise PrunexError(f"--budgets takes comma-separated fractions, got {budgets!r}") from err
    names = [n.strip() for n in policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRAINING_FREE]
    if unknown:
        raise PrunexError(f"unknown --policies {unknown}; choose among {', '.join(TRAINING_FREE)}")
    lm = load_lm(source).to(torch_device(device))
    lm._check_length(context)
    token_ids = token_windows(lm.tokenizer, split_text(str(text_file) if text_file else text, split), context,
                              windows)
    report = compare_policies(lm, token_ids, fractions, names, show_progress=not as_json)
    if plot is not None:
        plot_comparison(report, plot)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(f"dense perplexity {report.dense_perplexity:.3f}; {report.windows} windows of {context} tokens; "
               f"kept = {report.kept_measure}")
    for row in report.results:
        budget = "own" if row.kv_budget is None else f"{row.kv_budget:g} ({row.kv_tokens} tokens)"
        typer.echo(f"{row.policy:>11}  budget {budget:<18} kept {row.kv_kept:.3f}  perplexity {row.perplexity:.3f}"
                   f"  x{row.ratio_to_dense:.3f}")


@eval_app.command("accuracy")
def eval_accuracy(
    source: str = typer.Argument(..., help="LTP checkpoint dir, or an exported encoder dir (ONNX Runtime)."),
    task: str = typer.Option(..., help="bbc, rotten-tomatoes, or a CSV/JSONL file with text and label."),
    split: Optional[str] = typer.Option(
        None, help="train, validation, test or all; default: test for a packaged task (or the checkpoint's own "
        "training file), all for any other file (a separate evaluation set is scored whole)."
    ),
    limit: Optional[int] = typer.Option(None, min=1, help="Measure only the first N examples of the split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Accuracy of an LTP classifier with its token pruning, of its dense stage-1 model, and the FLOPs saved;
    an exported dir (fp32 or int8) runs on ONNX Runtime and reports its accuracy and tokens kept."""
    from prunex.cli.ltp_commands import eval_accuracy_command
    from prunex.loading import resolve_source

    if resolve_source(source).kind == "exported":
        from prunex.cli.exported_commands import eval_accuracy_exported
        from prunex.data.labelled import default_split
        from prunex.eval.exported import training_task

        eval_accuracy_exported(source, task, split or default_split(task, training_task(source)), limit, as_json)
        return

    eval_accuracy_command(source, task, split, limit, as_json)


@app.command()
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
    policy: Optional[str] = typer.Option(None, help="Keep policy on top of SOURCE's: window or sinks (any "
                                         "export); h2o or tova (PyTorch, or an --attention-scores export)."),
    kv_budget: Optional[float] = typer.Option(None, help="Its budget as a kept fraction of the longest prompt "
                                              "+ --max-new-tokens."),
    kv_tokens: Optional[int] = typer.Option(None, help="Its budget as cached tokens per row and layer."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate with the K/V cache pruned step by step: ONNX Runtime for an exported dir (sampling, streaming,
    batching), PyTorch (greedy) for a checkpoint or model name."""
    from prunex.cli.generate_command import generate_exported, generate_torch
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


@app.command()
def explain(
    source: Optional[str] = typer.Argument(None, help="Pruning checkpoint dir or model name; default: built-in."),
    text: Optional[str] = typer.Option(None, help="The text to explain."),
    text_file: Optional[Path] = typer.Option(None, help="A UTF-8 file with the text to explain."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a self-contained HTML report here."),
    png: Optional[Path] = typer.Option(None, help="Write a layer x token heatmap PNG here."),
    layer: int = typer.Option(0, min=0, help="The layer whose dropped tokens the terminal view dims."),
    max_tokens: int = typer.Option(512, min=2, help="Explain at most this many first tokens."),
    policy: Optional[str] = typer.Option(None, help="A training-free policy instead of SOURCE's own."),
    kv_budget: Optional[float] = typer.Option(None, help="KV budget (kept fraction over the text's length)."),
    kv_tokens: Optional[int] = typer.Option(None, help="KV budget in cached tokens per query and layer."),
    as_json: bool = typer.Option(False, "--json", help="Print the drop rates per layer and class as JSON."),
) -> None:
    """Which tokens each layer dropped and at which step: the text with one layer's dropped tokens dimmed,
    an HTML report and a PNG heatmap of how long each token survived, and drop rates by token class."""
    from rich.console import Console

    from prunex.eval.explain import explain_drops
    from prunex.eval.explain_views import render_terminal, write_html, write_png
    from prunex.loading import load_lm, resolve_source

    if (text is None) == (text_file is None):
        raise PrunexError("give exactly one of --text and --text-file")
    if text_file is not None and not text_file.is_file():
        raise PrunexError(f"--text-file {text_file} does not exist")
    if resolve_source(source).kind == "exported":
        raise PrunexError("explain runs in PyTorch: pass a checkpoint or model name, not an exported dir")
    content = text if text is not None else text_file.read_text(encoding="utf-8")
    lm = load_lm(source)
    token_ids = lm.tokenizer(content)["input_ids"][:max_tokens]
    if len(token_ids) < 2:
        raise PrunexError("the text needs at least 2 tokens")
    lm._check_length(len(token_ids))
    if policy is not None or kv_budget is not None or kv_tokens is not None:
        from prunex.cli.policy_options import budgeted_policy

        lm.policy = budgeted_policy(lm.policy, policy, kv_budget, kv_tokens, len(token_ids))
    drops = explain_drops(lm, token_ids)
    if layer >= drops.num_layers:
        raise PrunexError(f"--layer {layer}: the model has layers 0..{drops.num_layers - 1}")
    if out is not None:
        write_html(drops, out)
    if png is not None:
        write_png(drops, png)
    if as_json:
        typer.echo(json.dumps({"tokens": len(token_ids), "class_counts": drops.class_counts(),
                               "drop_rates": drops.drop_rates()}))
    else:
        render_terminal(drops, layer, Console())


@app.command()
def quantize(
    source: Path = typer.Argument(..., help="An exported dir (prunex export), fp32."),
    out: Path = typer.Option(..., "--out", help="Folder for the quantized model, its manifest and tokenizer."),
    mode: str = typer.Option("dynamic", help="dynamic: int8 (or --bits 4) weights, int8 activations at run "
                             "time (CPU); static: QDQ int8 calibrated on real text (CUDA / TensorRT)."),
    calibration_text: str = typer.Option("wikipedia", help="static, decoders: wikipedia, bbc or a UTF-8 file."),
    bits: int = typer.Option(8, help="dynamic: weight bits of the MatMuls, 8 or 4 (4: half the bytes a step "
                             "reads, a larger perplexity cost; embedding tables stay int8)."),
    block_size: Optional[int] = typer.Option(None, help="dynamic: input channels per scale (16..256; smaller is "
                                             "more accurate, larger decodes faster; default 128 at 8 bits, 32 at 4)."),
    task: Optional[str] = typer.Option(None, help="Encoders: labelled set for the accuracy check (default: the "
                                       "checkpoint's task)."),
    max_ppl_increase: float = typer.Option(0.03, min=0.0, help="Refuse when perplexity rises more (0.03 = 3%)."),
    max_accuracy_drop: float = typer.Option(0.01, min=0.0, help="Refuse when accuracy drops more (0.01 = 1 pt)."),
    eval_windows: int = typer.Option(8, min=1, help="Decoders: held-out Wikipedia windows for the check."),
    eval_context: int = typer.Option(512, min=8, help="Decoders: tokens per window."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="Encoders: test examples (default: all)."),
    per_channel: bool = typer.Option(True, help="static: one weight scale per output channel."),
    keep_fp32: list[str] = typer.Option([], "--keep-fp32", help="Leave in fp32 the MatMuls / Gathers whose node "
                                        "or weight name holds this (repeatable; e.g. lm_head, mlp.down)."),
    force: bool = typer.Option(False, help="Write even when the cost passes a bound."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime threads for the checks (0: as torch)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """int8 (or 4-bit) quantization of an exported dir, with its cost measured against the fp32 source
    (perplexity or accuracy on held-out data, size on disk); refused past the bounds unless --force."""
    from prunex.cli.exported_commands import quantize_command
    from prunex.quantize.int8 import QuantizeConfig

    config = QuantizeConfig(mode=mode, bits=bits, block_size=block_size, per_channel=per_channel,
                            keep_fp32=list(keep_fp32), calibration_text=calibration_text, task=task,
                            eval_windows=eval_windows, eval_context=eval_context, eval_limit=eval_limit,
                            max_ppl_increase=max_ppl_increase, max_accuracy_drop=max_accuracy_drop, force=force,
                            overwrite=overwrite, threads=threads or None)
    quantize_command(source, out, config, as_json)


@app.command()
def export(
    source: Optional[str] = typer.Argument(
        None, help="DCP or LTP checkpoint dir, or a decoder model name; default: built-in DCP."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for model.onnx, prunex.json and the tokenizer."),
    dense: bool = typer.Option(False, help="Export the same model without pruning (keep = valid)."),
    attention_scores: bool = typer.Option(False, help="Decoders: also output each layer's attention "
                                          "probabilities, so that run-time --policy h2o / tova can run on it."),
    opset: int = typer.Option(17, help="Standard ONNX opset (17 or later)."),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's validation figures as JSON."),
) -> None:
    """Export to ONNX, validated against PyTorch: a decoder (fused graph, DCP decisions inside) or an LTP encoder
    classifier (prunex::ThresholdGather between layers)."""
    from prunex.export.decoder import check_opset, export_decoder
    from prunex.export.folder import prepare_out
    from prunex.loading import load_lm, resolve_source

    check_opset(opset)
    prepare_out(out, force)
    resolved = resolve_source(source)
    if resolved.kind == "exported":
        raise PrunexError(f"{source} is already an exported dir; export a checkpoint or a model")
    if resolved.method == "ltp":
        from prunex.export.encoder import export_encoder
        from prunex.loading import load_ltp

        classifier, base = load_ltp(source)
        manifest = export_encoder(
            classifier, out, dense=dense, opset=opset, force=force, source=str(source),
            base_model=base.model_id, base_model_hash=base.weights_hash,
        )
        what = "kept tokens per layer equal"
    else:
        manifest = export_decoder(load_lm(source), out, dense=dense, opset=opset, force=force, source=resolved.path,
                                  attention_scores=attention_scores)
        what = "kept K/V entries equal"
    figures = manifest.validation
    if as_json:
        typer.echo(json.dumps({"out": str(out), "kind": manifest.kind, "method": manifest.method, **figures}))
    else:
        typer.echo(
            f"wrote {out} ({manifest.kind}, {manifest.method}): max |logit diff| vs PyTorch "
            f"{figures['max_logit_diff']:.2e} (tolerance {figures['tolerance']:g} x the largest |logit|), {what}"
        )

@app.command()
def serve(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir (decoder or LTP encoder; fp32 or int8; pruned or dense), or a DCP checkpoint / "
        "model name exported once into the cache; default: the built-in DCP model."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; loopback unless told otherwise."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, envvar="PRUNEX_API_KEY", help="Require `Authorization: Bearer "
                                          "KEY` on every route but /health (env: PRUNEX_API_KEY)."),
    max_batch: int = typer.Option(16, min=1, help="Requests decoded together (continuous batching)."),
    max_queue: int = typer.Option(64, min=0, help="Requests that may wait for a row; past it the answer is 503 "
                                  "with Retry-After at once."),
    device: str = typer.Option("auto", help="auto (CUDA if onnxruntime-gpu and a GPU), cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime intra-op threads (0: as torch)."),
    model_name: Optional[str] = typer.Option(None, help="The `model` clients send (default: the dir's name, or "
                                             "SOURCE as given)."),
    policy: Optional[str] = typer.Option(None, help="Run-time keep policy on top of the graph's own decisions "
                                         "(window, sinks: any exported decoder, dense included; h2o, tova: "
                                         "an --attention-scores export)."),
    kv_tokens: Optional[int] = typer.Option(None, min=1, help="The policy's budget: cached tokens per layer and "
                                            "request."),
    prefill_chunk: int = typer.Option(256, min=0, help="Prompt tokens prefilled between two decode steps: a long "
                                      "prompt delays running streams by one chunk's time per token (0: each "
                                      "prompt whole, the longest stalls)."),
    max_prompt_chars: Optional[int] = typer.Option(None, min=1, help="Longer prompt text is refused (400) before "
                                                   "tokenizing (default: 16 x the model's context)."),
    replicas: int = typer.Option(0, min=0, help="Ray Serve replicas, each with its own runtime and K/V cache, "
                                 "behind Ray's proxy (needs `pip install \"prunex[ray]\"`); 0: one process, no Ray."),
    max_replicas: Optional[int] = typer.Option(None, min=1, help="--replicas: autoscale from --replicas up to "
                                               "this many."),
    max_ongoing_requests: Optional[int] = typer.Option(None, min=1, help="--replicas: requests Ray sends one "
                                                       "replica at once (default --max-batch + --max-queue)."),
    max_queued_requests: int = typer.Option(-1, min=-1, help="--replicas: requests waiting in Ray's proxy; past it "
                                            "503 (-1: no limit)."),
) -> None:
    """An OpenAI-compatible server (/v1/completions with echo + logprobs, /v1/chat/completions, streaming,
    /v1/models, /health, /metrics, /tokenize, /detokenize, /tokenizer_info; /v1/classify for encoders)."""
    from prunex.cli.serve_command import serve_command

    serve_command(source, host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                  device=device, threads=threads or None, model_name=model_name, policy=policy, kv_tokens=kv_tokens,
                  prefill_chunk=prefill_chunk, max_prompt_chars=max_prompt_chars, replicas=replicas,
                  max_replicas=max_replicas, max_ongoing_requests=max_ongoing_requests,
                  max_queued_requests=max_queued_requests)


@bench_app.command("decode")
def bench_decode_command(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir (pruned, dense or int8), or a DCP checkpoint / model name to export (cached); "
        "default: the built-in DCP model."
    ),
    baseline: Optional[str] = typer.Option(
        None, help="Exported dir to compare with (default: the dense export of the same model)."
    ),
    batch: list[int] = typer.Option([1, 8, 16], "--batch", min=1, help="Rows decoded together (repeatable)."),
    context: list[int] = typer.Option([512, 1024, 2048], "--context", min=8, help="Prompt tokens (repeatable)."),
    new_tokens: int = typer.Option(64, min=3, help="Tokens generated per row."),
    threads: int = typer.Option(2, min=1, help="Threads for every engine."),
    repeats: int = typer.Option(1, min=1, help="Rounds of all engines in turn: medians, and the median of the "
                                "rounds' ratios (use 3-5 on a noisy machine)."),
    device: str = typer.Option("cpu", help="cpu or cuda for the ONNX Runtime engines."),
    torch_peer: bool = typer.Option(True, "--torch/--no-torch", help="Also run Hugging Face generate."),
    optimum_python: Optional[str] = typer.Option(
        None, help="Python of an environment with optimum-onnx (transformers<4.58): adds Optimum's ORT model."
    ),
    peer: list[str] = typer.Option([], "--peer", help="Also run a dense peer of another project (repeatable): "
                                   "ortgenai (onnxruntime-genai, at prunex's precision), llamacpp (llama.cpp: "
                                   "Q8_0 beside int8, else the packaged Q4_1; CMAKE_ARGS=-DGGML_NATIVE=ON pip "
                                   "install llama-cpp-python, ~10 min)."),
    policy: Optional[str] = typer.Option(None, help="Run-time keep policy for SOURCE (window, sinks; h2o, "
                                         "tova on an --attention-scores export); the baseline runs "
                                         "without it (give the same dir as --baseline)."),
    kv_budget: Optional[float] = typer.Option(None, help="Its budget as a kept fraction of the largest --context "
                                              "+ --new-tokens."),
    kv_tokens: Optional[int] = typer.Option(None, help="Its budget as cached tokens per row and layer."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="PNG of the results (default: beside --out)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report."),
) -> None:
    """Decode tokens/s, time to first token, KV bytes and peak RSS: prunex vs the dense export (same runtime)
    vs PyTorch generate, on the same Wikipedia prompts, each engine in a process of its own."""
    from prunex.bench.decode import PEERS, DecodeBenchConfig, bench_decode, plot
    from prunex.cli.policy_options import runtime_budget

    unknown = sorted(set(peer) - set(PEERS))
    if unknown:
        raise PrunexError(f"--peer {', '.join(unknown)} is not available; peers: {', '.join(PEERS)}")

    tokens = runtime_budget(policy, kv_budget, kv_tokens, max(context) + new_tokens)
    config = DecodeBenchConfig(batches=list(batch), contexts=list(context), new_tokens=new_tokens,
                               threads=threads, device=device, torch_peer=torch_peer, optimum_python=optimum_python,
                               repeats=repeats, peers=list(peer), policy=policy, kv_tokens=tokens)
    report = bench_decode(source, baseline, config, progress=lambda line: typer.echo(line, err=True))
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot_path or (out.with_suffix(".png") if out is not None else None)  # nothing written unasked
    if png is not None:
        if plot(report, png):
            typer.echo(f"plot: {png}", err=True)
        else:
            typer.echo("no plot: matplotlib is not installed (pip install 'prunex[bench]')", err=True)
    if as_json:
        typer.echo(json.dumps(report))


@bench_app.command("serve")
def bench_serve_command(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir, or a DCP checkpoint / model name to export (cached); default: the built-in model."
    ),
    baseline: Optional[str] = typer.Option(None, help="Exported dir to compare with (default: the dense export)."),
    clients: list[int] = typer.Option([8, 32, 64], "--clients", min=1, help="Concurrent streaming clients "
                                      "(repeatable)."),
    requests: int = typer.Option(64, min=1, help="Requests per client count (real prompts of mixed lengths)."),
    max_tokens: int = typer.Option(32, min=1, help="Tokens generated per request (greedy)."),
    prompt_length: list[int] = typer.Option([128, 512, 1024, 256], "--prompt-length", min=2,
                                            help="Prompt lengths, cycled over the requests (repeatable)."),
    max_batch: int = typer.Option(16, min=1, help="The server's --max-batch."),
    threads: int = typer.Option(2, min=1, help="The server's ONNX Runtime threads."),
    repeats: int = typer.Option(1, min=1, help="Rounds, the engines in turn in each (medians; use 2-3 on a noisy "
                                "machine)."),
    replicas: list[int] = typer.Option([], "--replicas", min=1, help="Instead of pruned vs dense: the export on "
                                       "Ray Serve with the first and the last replica count given (e.g. "
                                       "--replicas 2 --replicas 1)."),
    chaos: bool = typer.Option(False, "--chaos", help="Instead of the load test: what one hostile request does to "
                               "the others (a long prompt beside a stream, prompt scoring's memory, bad input, a "
                               "disconnect storm), with whole-prompt and chunked prefill side by side."),
    long_prompt: int = typer.Option(8000, min=16, help="--chaos: tokens of the long prompt."),
    prefill_chunk: int = typer.Option(256, min=16, help="--chaos: the chunked server's --prefill-chunk."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report."),
) -> None:
    """Load test of `prunex serve`: N concurrent streaming clients, the pruned export vs the dense export behind
    the same server, side by side: requests/s, tokens/s, TTFT and inter-token latency p50/p99, peak RSS, errors.
    With --chaos: the hostile-client run instead."""
    progress = lambda line: typer.echo(line, err=True)  # noqa: E731
    if chaos:
        from prunex.bench import serve_chaos

        config = serve_chaos.ChaosConfig(long_prompt_tokens=long_prompt, prefill_chunk=prefill_chunk,
                                         threads=threads)
        report = serve_chaos.bench_chaos(source, config, progress=progress)
        if out is not None:
            out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(json.dumps(report) if as_json else serve_chaos.markdown(report))
        return
    from prunex.bench.serve import ServeBenchConfig, bench_serve, markdown

    config = ServeBenchConfig(clients=list(clients), requests=requests, max_tokens=max_tokens,
                              prompt_lengths=list(prompt_length), threads=threads, max_batch=max_batch,
                              repeats=repeats, replicas=list(replicas))
    report = bench_serve(source, baseline, config, progress=progress)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(report) if as_json else markdown(report))


@bench_app.command("classify")
def bench_classify_command(
    source: str = typer.Argument(..., help="An LTP checkpoint dir (hard stage)."),
    task: Optional[str] = typer.Option(
        None, help="bbc, rotten-tomatoes, or a CSV/JSONL file (default: the checkpoint's own task)."
    ),
    split: Optional[str] = typer.Option(
        None, help="train, validation, test or all (default: test; all for a file the model did not train on)."
    ),
    engine: str = typer.Option("ort", help="ort: the LTP and dense exports in ONNX Runtime, fp32 and int8; "
                               "torch: the checkpoint and its stage-1 model in PyTorch."),
    batch: list[int] = typer.Option([1, 16], "--batch", min=1, help="ort: examples per run (repeatable)."),
    batch_size: int = typer.Option(16, min=1, help="torch: examples per forward (length-sorted batches)."),
    repeats: int = typer.Option(3, min=1, help="Timed rounds of every engine in turn (medians reported)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use the first N examples only."),
    threads: int = typer.Option(0, min=0, help="Threads per engine (0: ort 1, torch torch's default)."),
    out: Optional[Path] = typer.Option(None, "--out", help="ort: also write the JSON report to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Classification throughput, pruned vs dense on the same examples in one run: by default the exported
    LTP encoder against the dense export of the same classifier in ONNX Runtime (fp32 and int8)."""
    if engine == "ort":
        from prunex.bench.classify_ort import OrtClassifyConfig, bench_classify_ort

        config = OrtClassifyConfig(task=task, split=split, batches=list(batch), repeats=repeats, limit=limit,
                                   threads=threads or 1)
        report = bench_classify_ort(source, config, progress=lambda line: typer.echo(line, err=True))
        if out is not None:
            out.write_text(json.dumps(report, indent=2) + "\n")
        if as_json:
            typer.echo(json.dumps(report))
            return
        typer.echo(f"{report['examples']} {report['task']} {report['split']} examples, {report['mean_tokens']} "
                   f"tokens, relative FLOPs {report['relative_flops']:.3f}, {report['threads']} thread(s):")
        for row in report["rows"]:
            rates = ", ".join(f"{name} {e['examples_per_s']:.2f} ex/s ({e['accuracy']:.4f})"
                              for name, e in row["engines"].items())
            typer.echo(f"  batch {row['batch']}: {rates}; pruned/dense fp32 x{row['pruned_vs_dense_fp32']:.2f}, "
                       f"int8 x{row['pruned_vs_dense_int8']:.2f}")
        return
    if engine != "torch":
        raise PrunexError(f"--engine must be ort or torch, not {engine!r}")
    import torch

    from prunex.bench.classify import bench_classify
    from prunex.checkpoints.ltp import read_ltp_meta
    from prunex.data.labelled import default_split

    if threads:
        torch.set_num_threads(threads)
    trained_on = read_ltp_meta(source).training["task"]
    task = task or trained_on
    result = bench_classify(source, task, split or default_split(task, trained_on), batch_size, repeats, limit)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(
            f"pruned {result.pruned_examples_per_s:.2f} ex/s vs dense {result.dense_examples_per_s:.2f} ex/s: "
            f"x{result.speedup:.2f} (relative FLOPs {result.relative_flops:.3f}; accuracy "
            f"{result.pruned_accuracy:.4f} vs {result.dense_accuracy:.4f}; {result.examples} examples, "
            f"{result.threads} threads, median of {result.repeats})"
        )


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2, never a traceback."""
    from prunex.console import configure_cli_logging

    configure_cli_logging()
    try:
        app()
    except PrunexError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


