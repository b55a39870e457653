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
from prunex.export.manifest import MODEL_FILE, EncoderManifest, write_manifest
from prunex.export.ops import ONNX_OPSET, THRESHOLD_GATHER
from prunex.export.tracing import export_with_prunex_ops
from prunex.prune.ltp import LTPClassifier


class EncoderGraph(nn.Module):
    """The hard-mode layer loop of `run_encoder` with ThresholdGather between layers (dense: no removal)."""

    def __init__(self, classifier: LTPClassifier, dense: bool) -> None:
        super().__init__()
        self.classifier = classifier  # registers the weights and thresholds
        self.adapter = classifier.adapter
        self.dense = dense

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, pruner = self.adapter, self.classifier.thresholds
        B, T = input_ids.shape
        H, D = a.num_heads, a.head_dim
        alive = attention_mask.bool()  # (B, n) tokens present at this layer
        hidden = a.embed(input_ids)  # (B, T, d)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, n) original positions
        thresholds = pruner.thresholds()  # (L,)
        kept = []
        for layer in range(a.num_layers):
            n = hidden.shape[1]
            q, k, v = a.qkv(layer, hidden)  # (B, H, n, D) each
            scores = (q @ k.transpose(-1, -2)) * a.attention_scale(layer)  # (B, H, n, n)
            probs = scores.masked_fill(~alive[:, None, None, :], float("-inf")).softmax(-1)  # (B, H, n, n)
            residual, alive_next = hidden, alive
            if not self.dense:
                importance = pruner.score(layer, probs, alive)  # (B, n)
                protected = pruner.protected(layer, importance, alive)  # (B, n) [CLS] and the floor
                residual, alive_next, index = torch.ops.prunex.threshold_gather(
                    hidden, importance, thresholds[layer], alive, protected
                )  # (B, W, d), (B, W), (B, W)
                W = index.shape[1]
                probs = probs.gather(2, index[:, None, :, None].expand(B, H, W, n))  # (B, H, W, n) kept queries
                positions = torch.where(alive_next, positions.gather(1, index), -1)  # (B, W)
            attended = (probs @ v).transpose(1, 2).reshape(B, -1, H * D)  # (B, W, d)
            hidden = a.ffn_block(layer, a.attention_block(layer, attended, residual))  # (B, W, d)
            kept.append(alive_next.sum(-1))
            alive = alive_next
        return a.classify(hidden), torch.stack(kept, dim=1), positions


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
