"""Export a PrunedLM (DCP or dense) to the fused ONNX decoder graph (`prunex.export.decoder_graph`), validated.

`export_decoder(lm, out)` writes `model.onnx`, the tokenizer files and `prunex.json` into a temp folder next to
`out`, validates the graph against PyTorch (`prunex.export.validate`) and only then renames it to `out`; a
failure leaves nothing behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from prunex.errors import PrunexError
from prunex.export.decoder_graph import build_decoder_graph
from prunex.export.folder import prepare_out, write_atomically
from prunex.format import ATTENTION, MODEL_FILE, ONNX_OPSET, DecoderManifest, write_manifest
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM

MAX_OPSET = 20  # the newest standard opset the graph was checked with


def check_opset(opset: int) -> None:
    """Refuse opsets the export cannot write, with the supported range."""
    if not ONNX_OPSET <= opset <= MAX_OPSET:
        raise PrunexError(f"--opset {opset} is not supported: prunex exports with opset {ONNX_OPSET}..{MAX_OPSET}")


def _windows(adapter) -> list[int]:
    """Each layer's sliding window (0: a global layer), or [] for a model without sliding-window layers."""
    windows = [adapter.attention_window(layer) or 0 for layer in range(adapter.num_layers)]
    return windows if any(windows) else []


def build_manifest(lm: PrunedLM, policy: DCPPolicy | None, opset: int, source: str,
                   attention_scores: bool = False) -> DecoderManifest:
    """The manifest of `lm` exported with `policy` (None: dense), with the attention probabilities as outputs
    when `attention_scores` (what run-time H2O / TOVA need)."""
    a, config = lm.adapter, lm.base.model.config
    tokenizer = lm.tokenizer
    return DecoderManifest(
        method="dense" if policy is None else "dcp",
        ops=[],
        num_layers=a.num_layers, num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, head_dim=a.head_dim,
        interaction_dim=0 if policy is None else policy.state_dim,
        attention=ATTENTION if attention_scores else "",
        sink_tokens=0 if policy is None else policy.config.sink_tokens,
        windows=_windows(a),
        recent_tokens=0 if policy is None else policy.config.recent_tokens,
        vocab_size=int(config.vocab_size), max_positions=lm.max_positions, opset=opset,
        eos_token_id=None if tokenizer is None else tokenizer.eos_token_id,
        source=source, base_model=lm.base.model_id, base_model_hash=lm.base.weights_hash,
    )


def export_graph(lm: PrunedLM, policy: DCPPolicy | None, manifest: DecoderManifest, path: Path) -> None:
    """Build the fused graph of `lm` (with `policy`, or dense) into `path`."""
    onnx.save(build_decoder_graph(lm.adapter.graph_spec(), manifest, policy), str(path))


def export_decoder(
    lm: PrunedLM,
    out: str | Path,
    *,
    dense: bool = False,
    opset: int = ONNX_OPSET,
    force: bool = False,
    source: str = "",
    tolerance: float = 1e-4,
    validation_steps: int = 4,
    attention_scores: bool = False,
) -> DecoderManifest:
    """Export `lm` (its DCP policy, or dense) to the folder `out`, validated against PyTorch.

    tolerance: max |logit diff| allowed, relative to max(1, largest |logit|) of the PyTorch reference.
    attention_scores: also output each layer's attention probabilities (run-time H2O / TOVA need them; they
    cost a write of B x H x W floats a layer and step).
    """
    from prunex.export.validate import validate_decoder

    check_opset(opset)
    out = Path(out)
    prepare_out(out, force)
    policy = None if dense else lm.policy
    if policy is not None and not isinstance(policy, DCPPolicy):
        raise PrunexError(f"only DCP policies export to ONNX, not {type(policy).__name__} (the learned scorer's "
                          "per-K/V-head decisions run in PyTorch for now: `prunex eval ppl | compare`); use --dense "
                          "and a run-time --policy")
    if lm.tokenizer is None:
        raise PrunexError("the model has no tokenizer: an export needs one to validate and to run")
    manifest = build_manifest(lm, policy, opset, source, attention_scores)

    def fill(tmp: Path) -> DecoderManifest:
        started = time.perf_counter()
        export_graph(lm, policy, manifest, tmp / MODEL_FILE)
        lm.tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, manifest)
        export_seconds = time.perf_counter() - started
        manifest.validation = validate_decoder(lm, policy, tmp, tolerance=tolerance, steps=validation_steps)
        manifest.validation["export_seconds"] = round(export_seconds, 2)
        write_manifest(tmp, manifest)
        return manifest

    return write_atomically(out, fill)
