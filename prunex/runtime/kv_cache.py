"""The runtime's KV-cache manager: per layer, fixed slot buffers with a validity mask and amortized compaction.

Each layer holds slot buffers key/value (B, KV, W, D), kint (B, W, R), valid (B, W) bool and pos (B, W) int64
in torch tensors on the session's device. A step never moves the cache: ONNX Runtime reads the buffers in
place (IOBinding), the step's `keep_past` (B, W) becomes the validity mask, and each row's new entry is written
into a free slot of that row: the first hole a dropped entry left, so holes are reused and the width stays
near the fullest row. Order inside a row does not matter (attention is a sum over keys; decisions use the
stored positions). A layer is rebuilt (kept entries packed, with `headroom` free slots) only when a row has no
free slot left, or when its fullest row plus headroom fills less than `min_load` of W: a copy of the kept
entries now and then instead of one per step. Rows join (prefilled requests) and leave (finished requests) at any step.

Memory is accounted in bytes of K, V and interaction keys: held (valid entries), allocated (slots) with its
peak, and dense-equivalent (what a cache without pruning would hold for the same tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.tensors import gather_tokens, kv_entry_bytes, pack_kept

FIELDS = ("key", "value", "kint", "valid", "positions")


class CapacityError(PrunexError):
    """The cache cannot take a request without passing its hard limit; retry when rows have finished."""


@dataclass
class CacheLimits:
    """Hard limits of a KV-cache manager."""

    max_rows: int = 16  # requests decoded together
    max_bytes: int | None = None  # K/V/kint bytes the slot buffers may allocate (None: no limit)
    headroom: int = 32  # free slots a layer gets when it is (re)built
    min_load: float = 0.75  # rebuild a layer when its fullest row + headroom fill less than this share of W


@dataclass
class LayerSlots:
    """One layer's slot buffers for B rows and W slots; a slot is free where valid is False."""

    key: Tensor  # (B, KV, W, D)
    value: Tensor  # (B, KV, W, D)
    kint: Tensor  # (B, W, R)
    valid: Tensor  # (B, W) bool
    positions: Tensor  # (B, W) int64 logical positions
    write_slot: Tensor | None = None  # (B,) where the next entry of each row goes (set by `reserve`)

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    def tensors(self) -> tuple[Tensor, ...]:
        """The buffers in `FIELDS` order (the graph's past inputs)."""
        return self.key, self.value, self.kint, self.valid, self.positions


class KVCacheManager:
    """Per-layer slot buffers for a batch of rows, on `device`, shaped by an exported decoder's manifest."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, interaction_dim: int,
                 device: torch.device, limits: CacheLimits | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.kint_dim = interaction_dim
        self.device, self.dtype = device, dtype
        self.limits = limits or CacheLimits()
        self.layers = [self._allocate(0, 0) for _ in range(num_layers)]
        self.tokens_seen = torch.zeros(0, dtype=torch.int64)  # (B,) tokens fed per row (dense-equivalent)
        self.peak_allocated_bytes = 0
        self.compactions = 0

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.tokens_seen.shape[0])

    @property
    def bytes_per_entry(self) -> int:
        """Bytes of one token's K, V and interaction key in one layer."""
        return kv_entry_bytes(self.kv_heads, self.head_dim, self.kint_dim, self.dtype)

    def held_entries(self) -> Tensor:
        """(B,) valid entries per row, summed over layers."""
        return sum((slots.valid.sum(1).cpu() for slots in self.layers), torch.zeros(self.rows, dtype=torch.int64))

    def held_bytes(self) -> int:
        """Bytes of the entries the cache holds (valid slots)."""
        return int(self.held_entries().sum()) * self.bytes_per_entry

    def allocated_bytes(self) -> int:
        """Bytes of all slot buffers (held entries, holes and headroom)."""
        return sum(s.valid.numel() for s in self.layers) * self.bytes_per_entry

    def dense_bytes(self) -> int:
        """Bytes a dense cache would hold for the same tokens."""
        return int(self.tokens_seen.sum()) * self.num_layers * self.bytes_per_entry

    def _allocate(self, rows: int, width: int) -> LayerSlots:
        kw = {"device": self.device}
        return LayerSlots(
            key=torch.zeros(rows, self.kv_heads, width, self.head_dim, dtype=self.dtype, **kw),
            value=torch.zeros(rows, self.kv_heads, width, self.head_dim, dtype=self.dtype, **kw),
            kint=torch.zeros(rows, width, self.kint_dim, dtype=self.dtype, **kw),
            valid=torch.zeros(rows, width, dtype=torch.bool, **kw),
            positions=torch.zeros(rows, width, dtype=torch.int64, **kw),
        )

    def _install(self, new: dict[int, LayerSlots]) -> None:
        """Swap in new buffers for some layers at once, or raise CapacityError and change nothing."""
        total = self.allocated_bytes() + sum(
            (slots.valid.numel() - self.layers[layer].valid.numel()) * self.bytes_per_entry
            for layer, slots in new.items()
        )
        limit = self.limits.max_bytes
        if limit is not None and total > limit:
            raise CapacityError(
                f"the KV cache would need {total / 2**20:.1f} MiB, over its limit of {limit / 2**20:.1f} MiB: "
                "finish or cancel requests first, or raise the limit"
            )
        for layer, slots in new.items():
            self.layers[layer] = slots
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, total)

    # --- rows join and leave -----------------------------------------------------------------------------
    def check_rows(self, count: int) -> None:
        """Raise CapacityError unless `count` more rows fit the batch."""
        if self.rows + count > self.limits.max_rows:
            raise CapacityError(f"the batch is full ({self.limits.max_rows} rows): wait for a request to finish")

    def add_rows(self, new: list[dict[str, Tensor]], prompt_lengths: Tensor) -> None:
        """Append rows from a prefill: per layer, packed entries key/value (N, KV, Wn, D), kint (N, Wn, R),
        valid (N, Wn), positions (N, Wn); prompt_lengths (N,) tokens fed per new row. All or nothing."""
        count = int(prompt_lengths.shape[0])
        self.check_rows(count)
        B = self.rows
        grown: dict[int, LayerSlots] = {}
        for layer, entries in enumerate(new):
            old = self.layers[layer]
            new_width = entries["valid"].shape[1]
            slots = self._allocate(B + count, max(old.width, new_width + self.limits.headroom))
            for name in FIELDS:
                dst, dim = getattr(slots, name), 2 if name in ("key", "value") else 1
                dst.narrow(0, 0, B).narrow(dim, 0, old.width).copy_(getattr(old, name))
                dst.narrow(0, B, count).narrow(dim, 0, new_width).copy_(entries[name].to(dst.device, dst.dtype))
            grown[layer] = slots
        self._install(grown)
        self.tokens_seen = torch.cat([self.tokens_seen, prompt_lengths.to(torch.int64).cpu()])

    def remove_rows(self, keep: Tensor) -> None:
        """Keep only the rows whose index is in `keep` (R,), in that order."""
        keep = keep.to(torch.int64)
        index = keep.to(self.device)
        for layer, old in enumerate(self.layers):
            self.layers[layer] = LayerSlots(*(t.index_select(0, index) for t in old.tensors()))
        self.tokens_seen = self.tokens_seen.index_select(0, keep)
        if self.rows:
            self.compact_sparse_layers()
        else:
            self.layers = [self._allocate(0, 0) for _ in range(self.num_layers)]

    # --- a decode step -----------------------------------------------------------------------------------
    def reserve(self) -> None:
        """Before a step: pick each row's free slot for its new entry in every layer, rebuilding a layer where
        some row has none (one host sync for all layers); raises CapacityError before the step changes anything."""
        slots_found = []
        for slots in self.layers:
            free = ~slots.valid  # (B, W)
            slot = free.to(torch.uint8).argmax(1)  # (B,) first free slot of each row (0 when there is none)
            slots.write_slot = slot
            slots_found.append(free.gather(1, slot[:, None]).all())
        for layer in torch.nonzero(~torch.stack(slots_found)).flatten().tolist():
            self.compact(layer)
            self.layers[layer].write_slot = (~self.layers[layer].valid).to(torch.uint8).argmax(1)

    def apply_step(self, layer: int, keep_past: Tensor, new: dict[str, Tensor]) -> None:
        """After a step: `keep_past` (B, W) is the layer's new validity; the new entry of each row
        (key/value (B, KV, 1, D), kint (B, 1, R), valid / positions (B, 1)) goes into its reserved slot."""
        slots = self.layers[layer]
        if slots.write_slot is None:
            raise PrunexError("internal: apply_step without reserve")
        slots.valid.copy_(keep_past)
        rows, slot = torch.arange(self.rows, device=self.device), slots.write_slot
        slots.key[rows, :, slot] = new["key"][:, :, 0]
        slots.value[rows, :, slot] = new["value"][:, :, 0]
        slots.kint[rows, slot] = new["kint"][:, 0]
        slots.valid[rows, slot] = new["valid"][:, 0]
        slots.positions[rows, slot] = new["positions"][:, 0]
        slots.write_slot = None

    def count_step(self) -> None:
        """Every row was fed one more token."""
        self.tokens_seen += 1

    def compact(self, layer: int) -> None:
        """Rebuild a layer: each row's valid entries packed to the front (in slot order), plus headroom."""
        slots = self.layers[layer]
        order, valid = pack_kept(slots.valid, min_width=0)  # (B, kept) each
        kept = order.shape[1]
        packed = self._allocate(self.rows, kept + self.limits.headroom)
        for name in FIELDS:
            dim = 2 if name in ("key", "value") else 1
            getattr(packed, name).narrow(dim, 0, kept).copy_(gather_tokens(getattr(slots, name), order, dim))
        packed.valid.narrow(1, 0, kept).copy_(valid)
        self._install({layer: packed})
        self.compactions += 1

    def compact_sparse_layers(self) -> None:
        """Rebuild every layer where (fullest row + headroom) / W is under `min_load` (one host sync): a rebuilt
        layer has W = fullest row + headroom, so it is not rebuilt again until its rows shrink."""
        widths = torch.tensor([max(s.width, 1) for s in self.layers], dtype=torch.float64)
        fullest = torch.stack([s.valid.sum(1).max() if self.rows else s.valid.new_zeros((), dtype=torch.int64)
                               for s in self.layers]).cpu().to(torch.float64)
        load = (fullest + self.limits.headroom) / widths
        for layer in torch.nonzero(load < self.limits.min_load).flatten().tolist():
            self.compact(layer)
