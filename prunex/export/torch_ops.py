"""The PyTorch twin of the prunex ONNX op, exportable by the legacy (TorchScript) ONNX exporter.

`torch.ops.prunex.threshold_gather` computes in PyTorch exactly what `prunex::ThresholdGather` computes in ONNX
(see `prunex.export.ops`); `register_symbolics(opset)` makes `torch.onnx.export(dynamo=False)` emit it as one
prunex node, whose FunctionProto body the exporter attaches afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunex.format import DOMAIN, THRESHOLD_GATHER
from prunex.prune.encoder_forward import threshold_gather as threshold_gather_torch


@torch.library.custom_op("prunex::threshold_gather", mutates_args=())
def threshold_gather(
    hidden: Tensor, scores: Tensor, threshold: Tensor, mask: Tensor, keep_always: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """LTP removal: keep real tokens with scores > threshold or keep_always, packed in order.

    hidden: (B, T, H); scores: (B, T); threshold: () or broadcastable; mask, keep_always: (B, T) bool.
    Returns hidden_out (B, W, H), mask_out (B, W) bool, kept_index (B, W) int64.
    """
    hidden_out, valid, index = threshold_gather_torch(hidden, scores, threshold, mask.bool(), keep_always.bool())
    return hidden_out.clone(), valid, index


def _threshold_gather_symbolic(g, hidden, scores, threshold, mask, keep_always):
    """Legacy-exporter symbolic: one prunex::ThresholdGather node with three outputs."""
    outs = g.op(f"{DOMAIN}::{THRESHOLD_GATHER}", hidden, scores, threshold, mask, keep_always, outputs=3)
    outs[0].setType(hidden.type().with_sizes([None] * 3))
    outs[1].setType(mask.type().with_sizes([None] * 2))
    outs[2].setType(torch._C.TensorType.create_from_tensor(torch.zeros(1, 1, dtype=torch.int64)).with_sizes([None] * 2))
    return outs


_REGISTERED: set[int] = set()


def register_symbolics(opset: int) -> None:
    """Register the prunex symbolics for `opset` with the legacy exporter (idempotent)."""
    if opset in _REGISTERED:
        return
    torch.onnx.register_custom_op_symbolic("prunex::threshold_gather", _threshold_gather_symbolic, opset)
    _REGISTERED.add(opset)
