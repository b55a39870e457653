"""PyTorch twins of the prunex ONNX ops, exportable by the legacy (TorchScript) ONNX exporter.

`torch.ops.prunex.kv_compact` / `threshold_gather` compute in PyTorch exactly what `prunex::KVCompact` /
`prunex::ThresholdGather` compute in ONNX (see `prunex.export.ops`); `register_symbolics(opset)` makes
`torch.onnx.export(dynamo=False)` emit each as one prunex node,
whose FunctionProto body the exporter attaches afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunex.format import DOMAIN, KV_COMPACT, THRESHOLD_GATHER
from prunex.prune.encoder_forward import threshold_gather as threshold_gather_torch
from prunex.tensors import gather_tokens, pack_kept


@torch.library.custom_op("prunex::kv_compact", mutates_args=())
def kv_compact(
    K: Tensor, V: Tensor, K_int: Tensor, keep: Tensor, positions: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pack the entries where keep (B, T) is True at the front of each row, in order (width W >= 1).

    K, V: (B, KVH, T, D); K_int: (B, T, R); positions: (B, T) int64.
    Returns K_out, V_out (B, KVH, W, D), K_int_out (B, W, R), valid (B, W), lengths (B,), positions_out (B, W).
    """
    index, valid = pack_kept(keep)  # (B, W) each
    return (
        gather_tokens(K, index, 2).clone(),
        gather_tokens(V, index, 2).clone(),
        gather_tokens(K_int, index, 1).clone(),
        valid,
        keep.sum(-1).to(torch.int64),
        gather_tokens(positions, index, 1).clone(),
    )


def _kv_compact_symbolic(g, K, V, K_int, keep, positions):
    """Legacy-exporter symbolic: one prunex::KVCompact node with six outputs (dynamic packed width)."""
    outs = g.op(f"{DOMAIN}::{KV_COMPACT}", K, V, K_int, keep, positions, outputs=6)
    ranks = [4, 4, 3, 2, 1, 2]
    like = [K, V, K_int, keep, positions, positions]
    for out, rank, src in zip(outs, ranks, like):
        out.setType(src.type().with_sizes([None] * rank))
    return outs


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
    torch.onnx.register_custom_op_symbolic("prunex::kv_compact", _kv_compact_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("prunex::threshold_gather", _threshold_gather_symbolic, opset)
    _REGISTERED.add(opset)
