"""`prunex quantize`: int8 / 4-bit passes over an exported dir, their cost measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prunex.cli.options import Json


def quantize(
    source: Path = typer.Argument(..., help="An exported dir (prunex export), fp32."),
    out: Path = typer.Option(..., "--out", help="Folder for the quantized model, its manifest and tokenizer."),
    mode: str = typer.Option("dynamic", help="dynamic: int8 (or --bits 4) weights, int8 activations at run "
                             "time (CPU); static: QDQ int8 calibrated on real text (CUDA / TensorRT); none: "
                             "weights stay fp32 (with --kv int8: the cache alone)."),
    kv: str = typer.Option("float32", help="Decoders: the K/V cache's type. int8: a quarter of the bytes per "
                           "held token, per-channel scales calibrated on --calibration-text (CPU)."),
    calibration_text: str = typer.Option("wikipedia", help="static or --kv int8, decoders: a packaged text "
                                         "(wikipedia, bbc, ...) or a UTF-8 file; its training split is read."),
    bits: int = typer.Option(8, help="dynamic: weight bits of the MatMuls, 8 or 4 (4: half the bytes a step "
                             "reads, a larger perplexity cost; embedding tables stay int8)."),
    block_size: Optional[int] = typer.Option(None, help="dynamic: input channels per scale (16..256; smaller is "
                                             "more accurate, larger decodes faster; default 128 at 8 bits, 32 at 4)."),
    task: Optional[str] = typer.Option(None, help="Encoders: labelled set for the accuracy check (default: the "
                                       "checkpoint's task)."),
    max_ppl_increase: float = typer.Option(0.03, min=0.0, help="Refuse when perplexity rises more (0.03 = 3%)."),
    max_accuracy_drop: float = typer.Option(0.01, min=0.0, help="Refuse when accuracy drops more (0.01 = 1 pt)."),
    eval_windows: int = typer.Option(8, min=1, help="Decoders: held-out Wikipedia windows for the check."),
    eval_context: Optional[int] = typer.Option(None, min=8, help="Decoders: tokens per window (default 512; 2048 "
                                               "with --kv int8, so later prefill chunks read the int8 cache)."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="Encoders: test examples (default: all)."),
    per_channel: bool = typer.Option(True, help="static: one weight scale per output channel."),
    keep_fp32: list[str] = typer.Option([], "--keep-fp32", help="Leave in fp32 the MatMuls / Gathers whose node "
                                        "or weight name holds this (repeatable; e.g. lm_head, mlp.down)."),
    accept_cost: bool = typer.Option(False, help="Write even when the measured cost passes a bound."),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime threads for the checks (0: as torch)."),
    as_json: Json = False,
) -> None:
    """int8 (or 4-bit) weights and an int8 K/V cache for an exported dir, with the cost measured against the
    fp32 source (perplexity or accuracy on held-out data, size on disk, K/V bytes per token); refused past the
    bounds unless --accept-cost."""
    from prunex.quantize.int8 import QuantizeConfig

    config = QuantizeConfig(mode=mode, kv=kv, bits=bits, block_size=block_size, per_channel=per_channel,
                            keep_fp32=list(keep_fp32), calibration_text=calibration_text, task=task,
                            eval_windows=eval_windows, eval_context=eval_context, eval_limit=eval_limit,
                            max_ppl_increase=max_ppl_increase, max_accuracy_drop=max_accuracy_drop,
                            accept_cost=accept_cost, overwrite=force, threads=threads or None)
    quantize_command(source, out, config, as_json)


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
    kv = report.get("kv_bytes_per_token")
    cache = (f"; K/V cache {report['kv']}: {kv['fp32']} -> {kv['quantized']} bytes per token"
             if kv and report["kv"] != "float32" else "")
    return f"{report['mode']} {report['weights']}: {size}{cache}; {cost}"
