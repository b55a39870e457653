"""Export a PrunedLM (DCP or dense) to an ONNX decoder step graph (keep decisions and KVCompact in the graph).

`export_decoder(lm, out)` writes `model.onnx`, the tokenizer files and `prunex.json` into a temp folder next to
`out`, validates the graph against PyTorch (`prunex.export.validate`) and only then renames it to `out`; a
failure leaves nothing behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from prunex.errors import PrunexError
from prunex.export.folder import prepare_out, write_atomically
from prunex.export.step_module import DecoderStep
from prunex.export.tracing import export_with_prunex_ops
from prunex.format import CACHE_FIELDS, KV_COMPACT, MODEL_FILE, ONNX_OPSET, DecoderManifest, write_manifest
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM

MAX_OPSET = 20  # the newest standard opset the legacy exporter writes with these ops


def check_opset(opset: int) -> None:
    """Refuse opsets the export cannot write, with the supported range."""
    if not ONNX_OPSET <= opset <= MAX_OPSET:
        raise PrunexError(f"--opset {opset} is not supported: prunex exports with opset {ONNX_OPSET}..{MAX_OPSET}")


def build_manifest(lm: PrunedLM, policy: DCPPolicy | None, opset: int, source: str) -> DecoderManifest:
    """The manifest of `lm` exported with `policy` (None: dense)."""
    a, config = lm.adapter, lm.base.model.config
    tokenizer = lm.tokenizer
    return DecoderManifest(
        method="dense" if policy is None else "dcp",
        ops=[KV_COMPACT],
        num_layers=a.num_layers, num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, head_dim=a.head_dim,
        interaction_dim=0 if policy is None else policy.state_dim,
        vocab_size=int(config.vocab_size), max_positions=lm.max_positions, opset=opset,
        eos_token_id=None if tokenizer is None else tokenizer.eos_token_id,
        source=source, base_model=lm.base.model_id, base_model_hash=lm.base.weights_hash,
    )


def _example_inputs(manifest: DecoderManifest, past: int = 3, seq: int = 2) -> tuple[list[str], list[torch.Tensor]]:
    """Named example inputs (B=2, S=seq, P=past) to trace with; a padded past row keeps masks general."""
    B, m = 2, manifest
    names = list(m.inputs.values())
    tensors = [
        torch.randint(0, m.vocab_size, (B, seq)), torch.arange(past, past + seq).expand(B, seq).clone(),
        torch.ones(B, seq, dtype=torch.bool), torch.zeros(B, 1, dtype=torch.int64),
    ]
    for layer in range(m.num_layers):
        valid = torch.ones(B, past, dtype=torch.bool)
        valid[1, -1] = False
        names += [m.name(m.past[f], layer) for f in CACHE_FIELDS]
        tensors += [
            torch.randn(B, m.num_kv_heads, past, m.head_dim), torch.randn(B, m.num_kv_heads, past, m.head_dim),
            torch.randn(B, past, m.interaction_dim), valid, torch.arange(past).expand(B, past).clone(),
        ]
    return names, tensors


def _dynamic_axes(manifest: DecoderManifest) -> dict[str, dict[int, str]]:
    m = manifest
    axes = {name: {0: "batch", 1: "seq"} for name in m.inputs.values()}
    axes[m.inputs["logit_index"]] = {0: "batch", 1: "wanted"}
    axes[m.logits] = {0: "batch", 1: "wanted"}
    for layer in range(m.num_layers):
        # Layers prune differently: each gets its own width names (equal names promise equal sizes to ORT).
        axes[m.name(m.keep_past, layer)] = {0: "batch", 1: f"past{layer}"}
        for io, length in ((m.past, f"past{layer}"), (m.new, f"new{layer}")):
            for f in CACHE_FIELDS:
                axes[m.name(io[f], layer)] = {0: "batch", 2 if f in ("key", "value") else 1: length}
    return axes


def export_graph(lm: PrunedLM, policy: DCPPolicy | None, manifest: DecoderManifest, path: Path) -> None:
    """Trace the step module (example B=2, S=2, P=3) into `path` with the prunex FunctionProtos attached."""
    names, example = _example_inputs(manifest)
    outputs = manifest.output_names()
    step = DecoderStep(lm.adapter, policy).eval()
    export_with_prunex_ops(step, tuple(example), path, names, outputs, _dynamic_axes(manifest), manifest.opset)


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
) -> DecoderManifest:
    """Export `lm` (its DCP policy, or dense) to the folder `out`, validated against PyTorch.

    tolerance: max |logit diff| allowed, relative to max(1, largest |logit|) of the PyTorch reference.
    """
    from prunex.export.validate import validate_decoder

    check_opset(opset)
    out = Path(out)
    prepare_out(out, force)
    policy = None if dense else lm.policy
    if policy is not None and not isinstance(policy, DCPPolicy):
        raise PrunexError(f"only DCP policies export to ONNX, not {type(policy).__name__}; use --dense")
    if lm.tokenizer is None:
        raise PrunexError("the model has no tokenizer: an export needs one to validate and to run")
    manifest = build_manifest(lm, policy, opset, source)

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
