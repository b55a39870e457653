"""The runtime's KV-cache manager: slot buffers the fused graph writes into, appended to and compacted now and then.

All layers share one slot capacity W; per layer and row, `fill` slots are in use: kept entries and the holes
that dropped ones left. A step's S new entries go to slots fill .. fill + S - 1: before the run the manager
marks them valid with their positions and guards (`begin_step`); the graph's attention writes their keys and
values there in place; after the run the manager stores their interaction keys and takes the graph's `keep`
as the validity (`end_step`). Attention reads a row up to its fill, holes masked,
so holes cost bandwidth: a layer is compacted (each row's kept entries packed to the front, in order, in
place) when its holes pass `max_holes` of its filled slots, or when a row has no free slot left; W grows only
when a row's kept entries themselves need more room, and shrinks when the fullest layer no longer needs half.

Buffers (torch, on the session's device): key / value (L, B, KV, W, D), kint (L, B, R, W), valid (L, B, W)
bool, positions and guard (L, B, W) int64 (guard: the first query position that may drop the entry), score
(L, B, W) float (a run-time attention policy's per-entry state: H2O's accumulated mass, TOVA's last), fill and
seqlens (L, B) int32 (seqlens = fill - 1 after `begin_step`: what the attention reads). Memory is accounted in
bytes of K, V and interaction keys: held (valid entries), allocated (slots) with its peak, and dense-equivalent
(what a cache without pruning would hold for the same tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.tensors import gather_tokens, kv_entry_bytes, pack_kept


class CapacityError(PrunexError):
    """The cache cannot take a request without passing its hard limit; retry when rows have finished."""


@dataclass
class CacheLimits:
    """Hard limits and the compaction policy of a KV-cache manager."""

    max_rows: int = 16  # requests decoded together
    max_bytes: int | None = None  # K/V/kint bytes the slot buffers may allocate (None: no limit)
    headroom: int = 64  # free slots beyond the fullest row when the buffers are (re)allocated
    max_holes: float = 0.25  # compact a layer when its holes pass this share of its filled slots


class KVCacheManager:
    """Slot buffers for a batch of rows over `num_layers` layers, on `device`, shaped by a decoder's manifest."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, interaction_dim: int,
                 device: torch.device, limits: CacheLimits | None = None,
                 dtype: torch.dtype = torch.float32, guard: Callable[[Tensor], Tensor] | None = None,
                 max_width: int | None = None) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        # slots never needed past the model's context (a row holds at most that many entries); the fused graph's
        # attention also refuses buffers longer than its rotary table
        self.max_width = max_width
        self.kint_dim = interaction_dim
        self.guard_of = guard  # positions (…) -> guards (`DecoderManifest.guard`); None: the graph reads none
        self._new_slots: Tensor | None = None  # (L, B, S) the slots of the step under way
        self._grid_cache: tuple[Tensor, Tensor] | None = None
        self.device, self.dtype = device, dtype
        self.limits = limits or CacheLimits()
        self.tokens_seen = torch.zeros(0, dtype=torch.int64)  # (B,) tokens fed per row (dense-equivalent)
        self.peak_allocated_bytes = 0
        self.compactions = 0
        self.version = 0  # grows whenever the buffers are reallocated (bindings must be renewed)
        self._allocate(0, 0)

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.tokens_seen.shape[0])

    @property
    def capacity(self) -> int:
        return self.valid.shape[2]

    @property
    def bytes_per_entry(self) -> int:
        """Bytes of one token's K, V and interaction key in one layer."""
        return kv_entry_bytes(self.kv_heads, self.head_dim, self.kint_dim, self.dtype)

    def held_entries(self) -> Tensor:
        """(B,) valid entries per row, summed over layers."""
        return self.valid.sum((0, 2)).cpu()

    def layer_counts(self) -> Tensor:
        """(L, B) valid entries per layer and row."""
        return self.valid.sum(2).cpu()

    def held_bytes(self) -> int:
        """Bytes of the entries the cache holds (valid slots)."""
        return int(self.held_entries().sum()) * self.bytes_per_entry

    def allocated_bytes(self) -> int:
        """Bytes of all slot buffers (held entries, holes and free slots)."""
        return self.valid.numel() * self.bytes_per_entry

    def dense_bytes(self) -> int:
        """Bytes a dense cache would hold for the same tokens."""
        return int(self.tokens_seen.sum()) * self.num_layers * self.bytes_per_entry

    def fields(self) -> dict[str, Tensor]:
        """The buffers by manifest field name (`prunex.format.DECODER_PAST`), all layers stacked."""
        return {"key": self.key, "value": self.value, "kint": self.kint, "valid": self.valid,
                "positions": self.positions, "guard": self.guard, "score": self.score, "fill": self.fill,
                "seqlens": self.seqlens}

    # --- allocation --------------------------------------------------------------------------------------
    def _allocate(self, rows: int, width: int, keep_rows: int = 0, keep_width: int = 0) -> None:
        """New buffers of (rows, width), the first keep_rows x keep_width of the old ones copied over;
        raises CapacityError past `max_bytes` and changes nothing. The width is capped at `max_width`."""
        if self.max_width is not None:
            width, keep_width = min(width, self.max_width), min(keep_width, self.max_width)
        total = self.num_layers * rows * width * self.bytes_per_entry
        limit = self.limits.max_bytes
        if limit is not None and total > limit:
            raise CapacityError(
                f"the KV cache would need {total / 2**20:.1f} MiB, over its limit of {limit / 2**20:.1f} MiB: "
                "finish or cancel requests first, or raise the limit"
            )
        L, kw = self.num_layers, {"device": self.device}
        new = {
            "key": torch.zeros(L, rows, self.kv_heads, width, self.head_dim, dtype=self.dtype, **kw),
            "value": torch.zeros(L, rows, self.kv_heads, width, self.head_dim, dtype=self.dtype, **kw),
            "kint": torch.zeros(L, rows, self.kint_dim, width, dtype=self.dtype, **kw),
            "valid": torch.zeros(L, rows, width, dtype=torch.bool, **kw),
            "positions": torch.zeros(L, rows, width, dtype=torch.int64, **kw),
            "guard": torch.zeros(L, rows, width, dtype=torch.int64, **kw),
            "score": torch.zeros(L, rows, width, dtype=torch.float32, **kw),
            "fill": torch.zeros(L, rows, dtype=torch.int32, **kw),
            "seqlens": torch.zeros(L, rows, dtype=torch.int32, **kw),
        }
        if keep_rows and keep_width:
            for name, old in self.fields().items():
                region = new[name].narrow(1, 0, keep_rows)
                if name not in ROW_FIELDS:
                    region = region.narrow(_slot_dim(name), 0, keep_width)
                    old = old.narrow(_slot_dim(name), 0, keep_width)
                region.copy_(old.narrow(1, 0, keep_rows))
        self.key, self.value, self.kint = new["key"], new["value"], new["kint"]
        self.valid, self.positions, self.guard, self.score = new["valid"], new["positions"], new["guard"], new["score"]
        self.fill, self.seqlens = new["fill"], new["seqlens"]
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, total)
        self.version += 1

    def _resize(self, width: int) -> None:
        """Reallocate to `width` slots (every row's fill must fit)."""
        self._allocate(self.rows, width, self.rows, min(width, self.capacity))

    # --- rows join and leave -----------------------------------------------------------------------------
    def check_rows(self, count: int) -> None:
        """Raise CapacityError unless `count` more rows fit the batch."""
        if self.rows + count > self.limits.max_rows:
            raise CapacityError(f"the batch is full ({self.limits.max_rows} rows): wait for a request to finish")

    def start(self, rows: int, width: int) -> None:
        """Empty buffers for `rows` new rows of `width` slots (a prefill's own cache)."""
        self.tokens_seen = torch.zeros(rows, dtype=torch.int64)
        self._allocate(rows, width)

    def add_rows(self, other: KVCacheManager) -> None:
        """Append the rows of `other` (a prefilled cache of the same model) after the current ones. All or
        nothing: a CapacityError leaves this cache as it was."""
        count = other.rows
        self.check_rows(count)
        other.compact(range(other.num_layers))
        B, needed = self.rows, int(other.fill.max()) if count else 0
        self._allocate(B + count, max(self.capacity, needed + self.limits.headroom), B, self.capacity)
        for name, theirs in other.fields().items():
            region = getattr(self, name).narrow(1, B, count)
            if name not in ROW_FIELDS:
                region = region.narrow(_slot_dim(name), 0, needed)
                theirs = theirs.narrow(_slot_dim(name), 0, needed)
            region.copy_(theirs.to(self.device))
        self.tokens_seen = torch.cat([self.tokens_seen, other.tokens_seen])

    def remove_rows(self, keep: Tensor) -> None:
        """Keep only the rows whose index is in `keep` (R,), in that order."""
        keep = keep.to(torch.int64)
        index = keep.to(self.device)
        for name, tensor in self.fields().items():
            setattr(self, name, tensor.index_select(1, index))
        self.tokens_seen = self.tokens_seen.index_select(0, keep)
        self.version += 1
        self.compact_sparse_layers()

    # --- steps -------------------------------------------------------------------------------------------
    def reserve(self, count: int) -> None:
        """Before a step of `count` new tokens per row: make room after every row's fill in every layer,
        compacting full layers and growing W if their kept entries still leave no room (one host sync)."""
        fullest = self.fill.max(1).values.cpu()  # (L,)
        full = torch.nonzero(fullest + count > self.capacity).flatten().tolist()
        if full:
            self.compact(full)
            needed = int(self.fill.max()) + count
            if needed > self.capacity:
                self._resize(needed + self.limits.headroom)

    def begin_step(self, positions: Tensor) -> None:
        """Before a run that feeds `positions` (B, S): the new entries' slots (fill .. fill + S - 1 of every layer
        and row) become valid with their positions and guards; fill grows by S (call `reserve(S)` first)."""
        L, B, S = self.num_layers, self.rows, positions.shape[1]
        slots = self.fill.to(torch.int64)[:, :, None] + torch.arange(S, device=self.device)  # (L, B, S)
        layers, rows = self._grid()
        positions = positions.to(self.device)[None].expand(L, B, S)
        self.valid[layers, rows, slots] = True
        self.positions[layers, rows, slots] = positions
        self.score[layers, rows, slots] = 0.0
        if self.guard_of is not None:
            self.guard[layers, rows, slots] = self.guard_of(positions)
        self.fill += S
        torch.sub(self.fill, 1, out=self.seqlens)
        self.tokens_seen += S
        self._new_slots = slots

    def end_step(self, keep: Tensor | None, new_kint: Tensor | None) -> None:
        """After the run: `keep` (L, B, S, W) bool holds the validity after each query, the last one's is the
        cache's (None: the graph drops nothing); new_kint (L, B, S, R) the new entries' interaction keys."""
        slots, self._new_slots = self._new_slots, None
        if slots is None:
            raise PrunexError("internal: end_step without begin_step")
        if keep is not None:
            self.valid.copy_(keep[:, :, -1])
        if new_kint is not None and self.kint_dim:
            layers, rows = self._grid()
            self.kint[layers, rows, :, slots] = new_kint  # advanced indices first: (L, B, S, R)

    def _grid(self) -> tuple[Tensor, Tensor]:
        """Index tensors (L, 1, 1) of the layers and (B, 1) of the rows, made once per batch shape."""
        if self._grid_cache is None or self._grid_cache[1].shape[0] != self.rows:
            self._grid_cache = (torch.arange(self.num_layers, device=self.device)[:, None, None],
                                torch.arange(self.rows, device=self.device)[:, None])
        return self._grid_cache

    def compact(self, layers) -> None:
        """Pack each row's valid entries to the front of its slots (in order) in the given layers, in place.
        Slots past a row's new fill keep stale data: they are invalid and the attention never reads them."""
        layers = list(layers)
        if not layers or not self.rows:
            return
        index = torch.tensor(layers, device=self.device)
        valid = self.valid.index_select(0, index).flatten(0, 1)  # (l * B, W)
        order, kept = pack_kept(valid, min_width=0)  # (l * B, k) each
        width = order.shape[1]
        for name in ("key", "value", "kint", "positions", "guard", "score"):
            tensor, dim = getattr(self, name), _slot_dim(name)
            packed = gather_tokens(tensor.index_select(0, index).flatten(0, 1), order, dim - 1)
            tensor.narrow(dim, 0, width)[index] = packed.unflatten(0, (len(layers), self.rows))
        self.valid[index] = False
        self.valid.narrow(2, 0, width)[index] = kept.unflatten(0, (len(layers), self.rows))
        self.fill[index] = kept.sum(1).to(torch.int32).view(len(layers), self.rows)
        self.compactions += len(layers)

    def compact_sparse_layers(self) -> None:
        """Compact the layers whose holes pass `max_holes` of their filled slots, then shrink W when the
        fullest row of any layer needs less than half of it (one host sync)."""
        if not self.rows:
            self._allocate(0, 0)
            return
        filled = self.fill.sum(1).cpu().to(torch.float64)  # (L,)
        holes = filled - self.valid.sum((1, 2)).cpu().to(torch.float64)
        self.compact(torch.nonzero(holes > self.limits.max_holes * filled).flatten().tolist())
        needed = int(self.fill.max()) + self.limits.headroom
        if 2 * needed < self.capacity:
            self._resize(needed)


ROW_FIELDS = ("fill", "seqlens")  # (L, B): no slot axis


def _slot_dim(name: str) -> int:
    """The slot axis of a buffer (with the layer axis first)."""
    return 3 if name in ("key", "value", "kint") else 2
