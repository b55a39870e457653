"""`prunex export`: an ONNX graph validated against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prunex.cli.options import Json
from prunex.errors import PrunexError


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
    as_json: Json = False,
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
