"""A K/V cache that really loses tokens: per layer, per row, kept entries packed in order.

Each layer holds (B, KV, Tc, D) keys and values, the policy's per-token state, logical positions and a
validity mask; the valid entries of a row are packed at its front, so Tc is the longest row's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.tensors import gather_tokens, kv_entry_bytes, pack_kept, repeat_rows


@dataclass
class LayerCache:
    k: Tensor  # (B, KV, Tc, D)
    v: Tensor  # (B, KV, Tc, D)
    state: Tensor | None  # (B, Tc, r)
    positions: Tensor  # (B, Tc) logical positions
    valid: Tensor  # (B, Tc) bool, packed at the front of each row

    def compact(self, keep: Tensor) -> "LayerCache":
        """Keep the entries where `keep` (B, Tc) is True (and valid), packed in order."""
        index, valid = pack_kept(keep & self.valid)
        return LayerCache(
            k=gather_tokens(self.k, index, 2),
            v=gather_tokens(self.v, index, 2),
            state=None if self.state is None else gather_tokens(self.state, index, 1),
            positions=gather_tokens(self.positions, index, 1),
            valid=valid,
        )

    def append(self, keep: Tensor, k: Tensor, v: Tensor, state: Tensor | None, position: Tensor) -> "LayerCache":
        """Drop the cached entries not in `keep` (B, Tc) and add one new token per row.

        k, v: (B, KV, 1, D); state: (B, 1, r) or None; position: (B,).
        """
        joined = LayerCache(
            k=torch.cat([self.k, k], dim=2),
            v=torch.cat([self.v, v], dim=2),
            state=None if state is None else torch.cat([self.state, state], dim=1),
            positions=torch.cat([self.positions, position[:, None]], dim=1),
            valid=torch.cat([self.valid, torch.ones_like(self.valid[:, :1])], dim=1),
        )
        return joined.compact(torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1))

    @property
    def lengths(self) -> Tensor:
        """(B,) tokens held per row."""
        return self.valid.sum(-1)


class PrunedKVCache:
    """All layers' caches, built from a prompt's prefill and grown one token per row per step."""

    def __init__(self, layers: list[LayerCache], batch: int) -> None:
        self.layers = layers
        self.batch = batch  # sequences; a layer of a per-head policy has batch x K/V heads rows, one per head

    @classmethod
    def from_prefill(cls, prefill: list, valid: Tensor) -> "PrunedKVCache":
        """Build from `run_full(..., collect_prefill=True).prefill`; valid: (B, T) real prompt tokens."""
        B, T = valid.shape
        layers = []
        for p in prefill:
            heads = p.k.shape[0] // B  # K/V heads folded into the rows (per-head decisions), else 1
            positions = torch.arange(T, device=valid.device).expand(B * heads, T)
            layers.append(LayerCache(p.k, p.v, p.state, positions, repeat_rows(valid.bool(), heads))
                          .compact(p.keep_last))
        return cls(layers, B)

    def rows_per_sequence(self, layer: int) -> int:
        """How many cache rows a sequence has in `layer`: its K/V heads when they decide apart, else 1."""
        return self.layers[layer].k.shape[0] // self.batch

    def held_entries(self) -> Tensor:
        """(B,) tokens held per row, summed over layers (a per-head layer counts its heads' mean)."""
        return torch.stack([layer.lengths.view(self.batch, -1).float().mean(1) for layer in self.layers]).sum(0)

    def nbytes(self) -> int:
        """Bytes of K/V (and policy state) held by the valid entries."""
        total = 0
        for layer in self.layers:
            per_token = kv_entry_bytes(layer.k.shape[1], layer.k.shape[3],
                                       0 if layer.state is None else layer.state.shape[-1], layer.k.dtype,
                                       layer.k.dtype)
            total += int(layer.lengths.sum()) * per_token
        return total
