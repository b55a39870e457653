"""`prunex eval ppl | compare | accuracy` and `prunex explain`: quality with pruning against dense."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prunex.cli.options import Json, KvBudget, KvTokens, Policy, Text, TextFile, corpus
from prunex.errors import PrunexError

app = typer.Typer(help="Measure quality: perplexity, accuracy (encoders).", no_args_is_help=True)


@app.command("ppl")
def eval_ppl(
    source: Optional[str] = typer.Argument(
        None, help="Pruning checkpoint dir, model name, or exported dir (ONNX Runtime); default: built-in."
    ),
    text_file: TextFile = None,
    text: Text = "wikipedia",
    split: str = typer.Option("test", help="train, validation or test."),
    context: int = typer.Option(1024, min=8, help="Tokens per window."),
    windows: int = typer.Option(8, min=1, help="Windows to measure (at most)."),
    window: Optional[int] = typer.Option(None, help="Baseline: keep sinks + this many recent tokens (no training)."),
    sinks: int = typer.Option(4, min=0, help="Sink tokens of the --window baseline."),
    policy: Policy = None,
    kv_budget: KvBudget = None,
    kv_tokens: KvTokens = None,
    device: str = typer.Option("cpu", help="PyTorch sources: cpu, cuda or auto."),
    as_json: Json = False,
) -> None:
    """Perplexity of SOURCE with pruning, and of its dense base on the same windows, with the sparsity; an
    exported dir (fp32 or int8) runs on ONNX Runtime and reports its perplexity and the KV kept at the end.
    --policy replaces SOURCE's own policy; --kv-budget is a fraction of --context's causal entries, and without
    --policy it caps SOURCE's learned policy."""
    from prunex.data.text import split_text, token_windows
    from prunex.eval.perplexity import evaluate_perplexity
    from prunex.loading import load_lm, resolve_source
    from prunex.prune.window import WindowPolicy

    source_text = corpus(text, text_file)
    budgeted = policy is not None or kv_budget is not None or kv_tokens is not None
    if resolve_source(source).kind == "exported":
        if budgeted:
            raise PrunexError("--policy/--kv-budget measure in PyTorch: pass a checkpoint or model name")

        eval_ppl_exported(source, source_text, split, context, windows, as_json)
        return
    from prunex.devices import torch_device

    lm = load_lm(source).to(torch_device(device))
    if window is not None:
        if budgeted:
            raise PrunexError("--window is the sinks policy: use --policy sinks --kv-tokens N instead of both")
        lm.policy = WindowPolicy(window=window, sink_tokens=sinks)
    if budgeted:
        from prunex.cli.options import budgeted_policy

        lm.policy = budgeted_policy(lm.policy, policy, kv_budget, kv_tokens, context)
    lm.check_length(context)
    token_ids = token_windows(lm.tokenizer, split_text(source_text, split), context, windows)
    report = evaluate_perplexity(lm, token_ids, show_progress=not as_json)
    result = {"source": source or "built-in", "text": source_text, "split": split, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"perplexity {report.perplexity:.3f} (dense {report.dense_perplexity:.3f}, x{report.ppl_ratio:.3f}), "
            f"sparsity {report.sparsity:.3f}, {report.tokens} tokens in {report.windows} windows of {context}"
        )

@app.command("compare")
def eval_compare(
    source: Optional[str] = typer.Argument(None, help="Pruning checkpoint dir or model name; default: built-in."),
    text_file: TextFile = None,
    text: Text = "wikipedia",
    split: str = typer.Option("test", help="train, validation or test."),
    budgets: str = typer.Option("0.1,0.25,0.5", help="Kept fractions to compare at, comma-separated."),
    policies: str = typer.Option("window,sinks,h2o,tova", help="Training-free policies, comma-separated."),
    context: int = typer.Option(1024, min=8, help="Tokens per window."),
    windows: int = typer.Option(4, min=1, help="Windows to measure (at most)."),
    plot: Optional[Path] = typer.Option(None, help="Write perplexity against kept fraction as a PNG."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    as_json: Json = False,
) -> None:
    """Perplexity at equal KV budget on the same windows: dense, SOURCE's learned policy (DCP as trained and
    capped at each budget; a scorer held to each budget) and each training-free policy at each budget. Kept =
    fraction of causal key/value entries kept, over layers and positions (as `prunex eval ppl`)."""
    from prunex.data.text import split_text, token_windows
    from prunex.devices import torch_device
    from prunex.eval.compare import compare_policies, plot_comparison
    from prunex.loading import load_lm, resolve_source
    from prunex.prune.training_free import TRAINING_FREE

    source_text = corpus(text, text_file)
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
    lm.check_length(context)
    token_ids = token_windows(lm.tokenizer, split_text(source_text, split), context,
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

@app.command("accuracy")
def eval_accuracy(
    source: str = typer.Argument(..., help="LTP checkpoint dir, or an exported encoder dir (ONNX Runtime)."),
    task: str = typer.Option(..., help="bbc, rotten-tomatoes, or a CSV/JSONL file with text and label."),
    split: Optional[str] = typer.Option(
        None, help="train, validation, test or all; default: test for a packaged task (or the checkpoint's own "
        "training file), all for any other file (a separate evaluation set is scored whole)."
    ),
    limit: Optional[int] = typer.Option(None, min=1, help="Measure only the first N examples of the split."),
    as_json: Json = False,
) -> None:
    """Accuracy of an LTP classifier with its token pruning, of its dense stage-1 model, and the FLOPs saved;
    an exported dir (fp32 or int8) runs on ONNX Runtime and reports its accuracy and tokens kept."""
    from prunex.loading import resolve_source

    if resolve_source(source).kind == "exported":
        from prunex.data.labelled import default_split
        from prunex.eval.exported import training_task

        eval_accuracy_exported(source, task, split or default_split(task, training_task(source)), limit, as_json)
        return

    eval_accuracy_command(source, task, split, limit, as_json)

def explain(
    source: Optional[str] = typer.Argument(None, help="Pruning checkpoint dir or model name; default: built-in."),
    text: Optional[str] = typer.Option(None, help="The text to explain."),
    text_file: Optional[Path] = typer.Option(None, help="A UTF-8 file with the text to explain."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a self-contained HTML report here."),
    png: Optional[Path] = typer.Option(None, help="Write a layer x token heatmap PNG here."),
    layer: int = typer.Option(0, min=0, help="The layer whose dropped tokens the terminal view dims."),
    max_tokens: int = typer.Option(512, min=2, help="Explain at most this many first tokens."),
    policy: Policy = None,
    kv_budget: KvBudget = None,
    kv_tokens: KvTokens = None,
    as_json: Json = False,
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
    lm.check_length(len(token_ids))
    if policy is not None or kv_budget is not None or kv_tokens is not None:
        from prunex.cli.options import budgeted_policy

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


def eval_accuracy_command(source: str, task: str, split: str | None, limit: int | None, as_json: bool) -> None:
    """`prunex eval accuracy SOURCE --task T`: accuracy with pruning, dense accuracy, FLOPs, kept tokens."""
    from prunex.data.labelled import load_labelled
    from prunex.eval.accuracy import evaluate_accuracy

    load_labelled(task)  # an unknown task is refused before the model loads
    report = evaluate_accuracy(source, task, split, limit=limit, show_progress=not as_json)
    result = {"source": source, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"accuracy {report.accuracy:.4f} (dense {report.dense_accuracy:.4f}, {report.dense_source}) on "
        f"{report.examples} {task} examples (split: {report.split})\n"
        f"relative FLOPs {report.relative_flops:.3f}: {report.gflops:.3f} GFLOPs per example "
        f"(dense {report.dense_gflops:.3f}), {report.mean_tokens:.1f} tokens in\n"
        f"tokens kept per layer {report.tokens_kept_per_layer}"
    )

def eval_ppl_exported(source: str, text: str, split: str, context: int, windows: int, as_json: bool) -> None:
    """`prunex eval ppl DIR`: perplexity of an exported decoder (fp32 or int8) on ONNX Runtime."""
    from prunex.data.text import split_text, token_windows
    from prunex.errors import PrunexError
    from prunex.eval.exported import exported_perplexity
    from prunex.format import read_manifest
    from prunex.runtime.runtime import load_tokenizer

    manifest = read_manifest(source)
    if manifest.max_positions and context > manifest.max_positions:
        raise PrunexError(f"--context {context} exceeds the model's context of {manifest.max_positions}")
    token_ids = token_windows(load_tokenizer(source), split_text(text, split), context, windows)
    report = exported_perplexity(source, token_ids, show_progress=not as_json)
    quantization = manifest.quantization.get("mode", "none")
    result = {"source": source, "text": text, "split": split, "method": manifest.method,
              "quantization": quantization, "kv_cache": manifest.kv_cache, **report.to_dict()}
    _echo(result, as_json, f"perplexity {report.perplexity:.3f} (onnx, {quantization} quantization, "
          f"{manifest.kv_cache} K/V cache), kv kept at the end {report.kv_kept_at_end:.3f}, {report.tokens} tokens "
          f"in {report.windows} windows of {context}")

def eval_accuracy_exported(source: str, task: str, split: str, limit: int | None, as_json: bool) -> None:
    """`prunex eval accuracy DIR`: accuracy of an exported encoder (fp32 or int8) on ONNX Runtime."""
    from prunex.data.labelled import load_labelled
    from prunex.eval.exported import exported_accuracy
    from prunex.format import read_encoder_manifest

    load_labelled(task)  # an unknown task is refused before the model loads
    manifest = read_encoder_manifest(source)
    report = exported_accuracy(source, task, split, limit)
    quantization = manifest.quantization.get("mode", "none")
    result = {"source": source, "task": task, "split": split, "method": manifest.method,
              "quantization": quantization, **report.to_dict()}
    _echo(result, as_json, f"accuracy {report.accuracy:.4f} on {report.examples} {task} {split} examples (onnx, "
          f"{quantization} quantization); tokens {report.mean_tokens:.1f} in, "
          f"{report.mean_tokens_kept:.1f} left after the last layer")

def _echo(result: dict, as_json: bool, line: str) -> None:
    """Print an eval result: one JSON object with --json, else the one-line summary."""
    typer.echo(json.dumps(result) if as_json else line)
