"""Export an LTP encoder classifier to one ONNX graph: tokens are gathered out between layers in the graph.

Each layer's removal is a `prunex::ThresholdGather` node (importance > the layer's threshold, or [CLS]), so
later layers really run on fewer tokens, exactly as `run_encoder(mode="hard")`. `--dense` exports the same
classifier without pruning. Graph io: input_ids, attention_mask (B, T) int64 (right padded, [CLS] first) ->
logits (B, C), kept (B, L) int64 tokens present after each layer, positions (B, W) int64 (-1 on padding).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from prunex.errors import PrunexError
from prunex.export.decoder import check_opset
from prunex.export.folder import prepare_out, write_atomically
from prunex.export.tracing import export_with_prunex_ops
from prunex.format import MODEL_FILE, ONNX_OPSET, THRESHOLD_GATHER, EncoderManifest, write_manifest
from prunex.prune.encoder_forward import run_encoder
from prunex.prune.ltp import LTPClassifier


class EncoderGraph(nn.Module):
    """The encoder layer loop (`run_encoder`, hard mode) with `prunex::ThresholdGather` removing the tokens
    (dense: no removal)."""

    def __init__(self, classifier: LTPClassifier, dense: bool) -> None:
        super().__init__()
        self.classifier = classifier  # registers the weights and thresholds
        self.adapter = classifier.adapter
        self.dense = dense

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        result = run_encoder(self.adapter, input_ids, attention_mask, self.classifier.thresholds,
                             "dense" if self.dense else "hard", gather=torch.ops.prunex.threshold_gather)
        return result.logits, result.kept, result.positions  # (B, C), (B, L), (B, W)


def build_encoder_manifest(classifier: LTPClassifier, dense: bool, opset: int, source: str,
                           base_model: str, base_model_hash: str) -> EncoderManifest:
    """The manifest of `classifier` exported with (ltp) or without (dense) token removal."""
    a, config = classifier.adapter, classifier.model.config
    return EncoderManifest(
        method="dense" if dense else "ltp", ops=[] if dense else [THRESHOLD_GATHER],
        num_layers=a.num_layers, num_heads=a.num_heads, hidden_size=a.hidden_size,
        num_labels=int(config.num_labels), label_names=list(classifier.label_names),
        thresholds=[float(t) for t in classifier.thresholds.thresholds().detach()],
        max_length=int(a.max_length), opset=opset, source=source, base_model=base_model,
        base_model_hash=base_model_hash,
    )


def export_encoder(
    classifier: LTPClassifier,
    out: str | Path,
    *,
    dense: bool = False,
    opset: int = ONNX_OPSET,
    force: bool = False,
    source: str = "",
    base_model: str = "",
    base_model_hash: str = "",
    tolerance: float = 1e-4,
    texts: tuple[str, ...] | None = None,
) -> EncoderManifest:
    """Export `classifier` to the folder `out`, validated against PyTorch (logits, kept tokens per layer)."""
    from prunex.export.validate import ENCODER_TEXTS, validate_encoder

    check_opset(opset)
    out = Path(out)
    prepare_out(out, force)
    if classifier.tokenizer is None:
        raise PrunexError("the classifier has no tokenizer: an export needs one to validate and to run")
    classifier.eval()
    manifest = build_encoder_manifest(classifier, dense, opset, source, base_model, base_model_hash)

    def fill(tmp: Path) -> EncoderManifest:
        started = time.perf_counter()
        ids = torch.tensor([[2, 5, 6, 7], [2, 5, 6, 0]])  # (2, 4) example; axes are dynamic
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        axes = {name: {0: "batch", 1: "tokens"} for name in manifest.inputs.values()}
        axes.update({manifest.outputs["logits"]: {0: "batch"}, manifest.outputs["kept"]: {0: "batch"},
                     manifest.outputs["positions"]: {0: "batch", 1: "kept_width"}})
        export_with_prunex_ops(
            EncoderGraph(classifier, dense).eval(), (ids, mask), tmp / MODEL_FILE,
            list(manifest.inputs.values()), list(manifest.outputs.values()), axes, opset,
        )
        classifier.tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, manifest)
        export_seconds = time.perf_counter() - started
        manifest.validation = validate_encoder(
            classifier, dense, tmp, tolerance=tolerance, texts=texts or ENCODER_TEXTS
        )
        manifest.validation["export_seconds"] = round(export_seconds, 2)
        write_manifest(tmp, manifest)
        return manifest

    return write_atomically(out, fill)
