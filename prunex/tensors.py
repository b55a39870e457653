"""Tensor helpers shared by the PyTorch paths (`prune`) and the runtime: the order-preserving packing plan of a
pruned cache, the gather that applies it, and what one cached token costs in bytes."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pack_kept(keep: Tensor, min_width: int = 1) -> tuple[Tensor, Tensor]:
    """Order-preserving compaction plan.

    keep: (B, N) bool. Returns index (B, W) of the kept entries in order, padded with dropped ones, and
    valid (B, W) bool, where W is the largest per-row count (at least `min_width`).
    """
    counts = keep.sum(-1)  # (B,)
    width = max(int(counts.max()) if counts.numel() else 0, min_width)
    # A stable sort on "dropped" puts kept entries first, in their original order.
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[:, :width]  # (B, W)
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return order, valid


def gather_tokens(tensor: Tensor, index: Tensor, token_dim: int) -> Tensor:
    """Gather along `token_dim` with a (B, W) index, broadcasting over the other dims (dim 0 is the batch)."""
    if token_dim == tensor.dim() - 2 > 0 and tensor.is_contiguous():
        return _gather_rows(tensor, index)
    shape = [1] * tensor.dim()
    shape[0], shape[token_dim] = index.shape
    sizes = list(tensor.shape)
    sizes[token_dim] = index.shape[1]
    return tensor.gather(token_dim, index.view(shape).expand(sizes))


def _gather_rows(tensor: Tensor, index: Tensor) -> Tensor:
    """`gather_tokens` when each token is a contiguous row of the last dim, as keys and values (B, H, N, D) are:
    one index_select of whole rows, ~2.5x faster than an element-wise gather on the CPU."""
    B, N, D = tensor.shape[0], tensor.shape[-2], tensor.shape[-1]
    middle = tensor.shape[1:-2]  # e.g. (H,)
    heads = math.prod(middle)
    first_row = torch.arange(B * heads, device=tensor.device).view(B, heads, 1) * N  # (B, heads, 1)
    rows = (first_row + index[:, None, :]).flatten()  # (B * heads * W,)
    return tensor.reshape(-1, D).index_select(0, rows).view(B, *middle, index.shape[1], D)


def kv_entry_bytes(num_kv_heads: int, head_dim: int, state_dim: int = 0, kv_dtype: torch.dtype = torch.float32,
                   state_dtype: torch.dtype = torch.float32) -> int:
    """Bytes one token holds in one layer's cache: its key and value over the KV heads, plus a policy's state."""
    return 2 * num_kv_heads * head_dim * kv_dtype.itemsize + state_dim * state_dtype.itemsize


def fold_heads(t: Tensor, heads: int) -> Tensor:
    """(B, heads, ...) -> (B * heads, 1, ...): each K/V head its own batch row."""
    return t.reshape(t.shape[0] * heads, 1, *t.shape[2:])


def repeat_rows(t: Tensor, heads: int) -> Tensor:
    """(B, ...) -> (B * heads, ...): a per-sequence tensor for each folded head row."""
    return t.repeat_interleave(heads, dim=0)
