"""Plain functions behind the commands that take exported dirs: eval on ONNX Runtime, quantize."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def eval_ppl_exported(source: str, corpus: str, split: str, context: int, windows: int, as_json: bool) -> None:
    """`prunex eval ppl DIR`: perplexity of an exported decoder (fp32 or int8) on ONNX Runtime."""
    from prunex.data.text import split_text, token_windows
    from prunex.errors import PrunexError
    from prunex.eval.exported import exported_perplexity
    from prunex.format import read_manifest
    from prunex.runtime.runtime import load_tokenizer

    manifest = read_manifest(source)
    if manifest.max_positions and context > manifest.max_positions:
        raise PrunexError(f"--context {context} exceeds the model's context of {manifest.max_positions}")
    token_ids = token_windows(load_tokenizer(source), split_text(corpus, split), context, windows)
    report = exported_perplexity(source, token_ids, show_progress=not as_json)
    quantization = manifest.quantization.get("mode", "none")
    result = {"source": source, "text": corpus, "split": split, "method": manifest.method,
              "quantization": quantization, **report.to_dict()}
    _echo(result, as_json, f"perplexity {report.perplexity:.3f} (onnx, {quantization} quantization), kv kept at "
          f"the end {report.kv_kept_at_end:.3f}, {report.tokens} tokens in {report.windows} windows of {context}")


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


def quantize_command(source: Path, out: Path, config, as_json: bool) -> None:
    """`prunex quantize`: run the pass, print its cost; a refusal prints the figures, then the error."""
    from prunex.quantize.int8 import QuantizationRefused, quantize_dir

    try:
        report = quantize_dir(source, out, config, progress=lambda line: typer.echo(line, err=True))
    except QuantizationRefused as refused:
        typer.echo(json.dumps(refused.report) if as_json else _describe(refused.report), err=not as_json)
        raise
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(_describe(report) + f"\nwritten: {out}")


def _describe(report: dict) -> str:
    size = (f"{report['fp32_bytes'] / 2**20:.1f} MiB -> {report['quantized_bytes'] / 2**20:.1f} MiB "
            f"(x{report['size_ratio']:.2f} smaller)")
    if report["kind"] == "decoder":
        cost = (f"perplexity {report['fp32']['perplexity']:.3f} -> {report['quantized']['perplexity']:.3f} "
                f"({100 * report['ppl_increase']:+.2f}%)")
    else:
        cost = (f"accuracy {report['fp32']['accuracy']:.4f} -> {report['quantized']['accuracy']:.4f} "
                f"({-100 * report['accuracy_drop']:+.2f} pt)")
    return f"{report['mode']} {report['weights']}: {size}; {cost}"
