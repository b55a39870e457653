"""The runtime's KV-cache manager: slot buffers the fused graph writes into, appended to and compacted now and then.

Each layer has its own slot capacity W_l, so a layer that prunes hard holds few slots and the graph's keep
decisions and attention for it cover only those. Per layer and row, `fill` slots are in use: kept entries and the
holes that dropped ones left. A step's S new entries go to slots fill .. fill + S - 1: before the run the manager
marks them valid with their positions and guards (`begin_step`); the graph's attention writes their keys and
values there in place; after the run the manager stores their interaction keys and takes the graph's `keep` as
the validity (`end_step`). Attention reads a row up to its fill, holes masked, so holes cost bandwidth: a layer
is compacted (each row's kept entries packed to the front, in order, in place) when its holes pass `max_holes`
of its filled slots, or when a row has no free slot left; a layer's W_l grows only when a row's kept entries
themselves need more room, and shrinks when its fullest row no longer needs half.

Storage, on the session's device: key and value (the bulk of the bytes) a tensor per layer, so growing one layer
copies only that layer; every other field one flat buffer, the layers' blocks one after the other.
`layer_view(field, l)` is layer l's part: key / value (B, KV, W_l, D) float32 or int8, kint (B, R, W_l), valid
(B, W_l) bool, positions and guard (B, W_l) int64 (guard: the first query position that may drop the entry),
score (B, W_l) float (a run-time attention policy's per-entry state: H2O's accumulated mass, TOVA's last). A
cache keeps only the fields someone reads: kint and guard for a DCP graph, positions and score for a run-time
policy (`policy_fields`). Slot s of row b in
layer l is element `row_start[l, b] + s` of a per-slot field (valid, positions, guard, score), so a step's
bookkeeping is a few indexed writes over all layers at once. fill and seqlens are (L, B) int32 (seqlens =
fill - 1 after `begin_step`: what the attention reads). Memory is accounted in bytes of K, V and interaction
keys: held (valid entries), allocated (slots) with its peak, and dense-equivalent (what a cache without pruning
would hold for the same tokens).

One class in one module (~360 lines): allocation, growth, compaction and the step's bookkeeping all index the same
flat per-layer blocks, and splitting them would spread one layout over several files.
"""

from __future__ import annotations

import math
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
    headroom: int = 64  # free slots beyond a layer's fullest row when its buffers are (re)allocated
    max_holes: float = 0.25  # compact a layer when its holes pass this share of its filled slots


FIELDS = ("key", "value", "kint", "valid", "positions", "guard", "score")  # one slot axis each
KV_FIELDS = ("key", "value")  # the bulk of the bytes: one tensor per layer, the other fields flat


class KVCacheManager:
    """Slot buffers for a batch of rows over `num_layers` layers, on `device`, shaped by a decoder's manifest."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, interaction_dim: int,
                 device: torch.device, limits: CacheLimits | None = None,
                 kv_dtype: torch.dtype = torch.float32, guard: Callable[[Tensor], Tensor] | None = None,
                 max_width: int | None = None, policy_fields: tuple[str, ...] = ()) -> None:
        self.num_layers, self.kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        read = {"key", "value", "valid", *policy_fields} | ({"kint"} if interaction_dim else set()) | (
            {"guard"} if guard is not None else set())
        self.fields = tuple(f for f in FIELDS if f in read)  # the buffers kept
        # slots never needed past the model's context (a row holds at most that many entries); the fused graph's
        # attention also refuses buffers longer than its rotary table
        self.max_width = max_width
        self.kint_dim = interaction_dim
        self.guard_of = guard  # positions (…) -> guards (`DecoderManifest.guard`); None: the graph reads none
        self._step_tokens: int | None = None  # S of the step under way (between begin_step and end_step)
        self.device, self.kv_dtype = device, kv_dtype  # key / value: float32, or int8 (the graph's scales)
        self.limits = limits or CacheLimits()
        self.tokens_seen = torch.zeros(0, dtype=torch.int64)  # (B,) tokens fed per row (dense-equivalent)
        self.widths = [0] * num_layers  # W_l: each layer's slot capacity
        self.fill = torch.zeros(num_layers, 0, dtype=torch.int32)
        self._views: dict[str, list[Tensor]] = {}
        self.peak_allocated_bytes = 0
        self.compactions = 0
        self.version = 0  # grows whenever the buffers are reallocated (bindings must be renewed)
        self._allocate(0, self.widths)

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.tokens_seen.shape[0])

    @property
    def capacity(self) -> int:
        """The largest layer capacity."""
        return max(self.widths)

    @property
    def bytes_per_entry(self) -> int:
        """Bytes of one token's K, V and interaction key in one layer."""
        return kv_entry_bytes(self.kv_heads, self.head_dim, self.kint_dim, self.kv_dtype)

    def layer_counts(self) -> Tensor:
        """(L, B) valid entries per layer and row."""
        return self._layer_counts().cpu()

    def _layer_counts(self) -> Tensor:
        return torch.stack([valid.sum(1) for valid in self._views["valid"]])  # (L, B) on the device

    def held_entries(self) -> Tensor:
        """(B,) valid entries per row, summed over layers."""
        return self.layer_counts().sum(0)

    def held_bytes(self) -> int:
        """Bytes of the entries the cache holds (valid slots)."""
        return int(self.held_entries().sum()) * self.bytes_per_entry

    def allocated_bytes(self) -> int:
        """Bytes of all slot buffers (held entries, holes and free slots)."""
        return self.rows * sum(self.widths) * self.bytes_per_entry

    def dense_bytes(self) -> int:
        """Bytes a dense cache would hold for the same tokens."""
        return int(self.tokens_seen.sum()) * self.num_layers * self.bytes_per_entry

    # --- the buffers -------------------------------------------------------------------------------------
    def layer_view(self, field: str, layer: int) -> Tensor:
        """Layer `layer`'s block of a buffer (one of `fields`), a view: writes land in the cache."""
        return self._views[field][layer]

    def graph_inputs(self, layer: int) -> dict[str, Tensor]:
        """A layer's buffers by manifest field (`prunex.format.DECODER_PAST`), shaped as the graph reads them."""
        views = {field: self._views[field][layer] for field in ("key", "value", "kint") if field in self._views}
        views.update({field: self._views[field][layer][:, None] for field in ("valid", "guard", "positions")
                      if field in self._views})  # (B, 1, W_l)
        views.update(seqlens=self.seqlens[layer], capacity=self._capacity[layer])
        return views

    def layer_buffers(self, before: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, list[Tensor]]:
        """A new flat buffer laid out like the slots, with its per-layer views (B, *before, W_l): where the
        graph writes a per-slot output (keep, attention). With before=(1,) its layout is valid's."""
        flat = torch.empty(math.prod(before) * self._total_slots, dtype=dtype, device=self.device)
        return flat, self._blocks(flat, before, ())

    def _blocks(self, flat: Tensor, before: tuple[int, ...], after: tuple[int, ...]) -> list[Tensor]:
        """Per-layer views (B, *before, W_l, *after) of a flat buffer."""
        unit, rows = math.prod(before) * math.prod(after), self.fill.shape[1]
        return [flat.narrow(0, unit * start, unit * rows * width).view(rows, *before, width, *after)
                for start, width in zip(self._slot_offsets, self.widths)]

    def _layout(self, field: str) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
        """(axes before the slot axis, axes after it, dtype) of a field's per-layer block, rows first."""
        if field in ("key", "value"):
            return (self.kv_heads,), (self.head_dim,), self.kv_dtype
        if field == "kint":
            return (self.kint_dim,), (), torch.float32
        dtypes = {"valid": torch.bool, "positions": torch.int64, "guard": torch.int64, "score": torch.float32}
        return (), (), dtypes[field]

    def _slot_axis(self, field: str) -> int:
        """The slot axis of a field's per-layer block."""
        return 1 + len(self._layout(field)[0])

    # --- allocation --------------------------------------------------------------------------------------
    def _allocate(self, rows: int, widths: list[int], source_rows: Tensor | None = None) -> None:
        """New buffers of `rows` rows and per-layer `widths` (capped at `max_width`), filled with the old
        buffers' rows `source_rows` (R,) in order (R <= rows; their fill must fit); raises CapacityError past
        `max_bytes` and changes nothing."""
        if self.max_width is not None:
            widths = [min(width, self.max_width) for width in widths]
        total = rows * sum(widths) * self.bytes_per_entry
        limit = self.limits.max_bytes
        if limit is not None and total > limit:
            raise CapacityError(
                f"the KV cache would need {total / 2**20:.1f} MiB, over its limit of {limit / 2**20:.1f} MiB: "
                "finish or cancel requests first, or raise the limit"
            )
        old_views, old_fill, old_widths = self._views, self.fill, self.widths
        same_rows = (source_rows is not None and len(source_rows) == rows == old_fill.shape[1]
                     and torch.equal(source_rows, torch.arange(rows)))  # a resize: unchanged layers stay
        self.widths = list(widths)
        starts = [0, *torch.tensor(widths, dtype=torch.int64).cumsum(0).tolist()]
        self._slot_offsets = [rows * start for start in starts[:-1]]  # where each layer's block starts
        self._total_slots = rows * starts[-1]
        self.fill = torch.zeros(self.num_layers, rows, dtype=torch.int32, device=self.device)
        self._flat, self._views = {}, {}
        for field in self.fields:
            before, after, dtype = self._layout(field)
            # Only validity and the interaction keys need a value: the other fields of an invalid slot are never
            # read. The decisions' MatMul reads kint over every slot (and masks the invalid ones); fresh memory
            # holding old int data reads as denormal floats, on which it ran ~100x slower (a batch-1 prefill of
            # 512 tokens: 1.45 s against 0.76). Stale kint left by a compaction is real keys: no cost.
            empty = torch.zeros if field in ("valid", "kint") else torch.empty
            if field in KV_FIELDS:  # a tensor per layer: a resize copies only the layers whose width changed
                self._views[field] = [
                    old_views[field][layer] if same_rows and width == old_widths[layer]
                    else empty(rows, *before, width, *after, dtype=dtype, device=self.device)
                    for layer, width in enumerate(widths)]
            else:
                self._flat[field] = empty(math.prod(before) * math.prod(after) * self._total_slots, dtype=dtype,
                                          device=self.device)
                self._views[field] = self._blocks(self._flat[field], before, after)
        if source_rows is not None and len(source_rows):
            index = source_rows.to(self.device)
            self.fill[:, :len(index)] = old_fill.index_select(1, index)
            used = old_fill.max(1).values.tolist()
            for field in self.fields:
                axis = self._slot_axis(field)
                for layer, (old, new) in enumerate(zip(old_views[field], self._views[field])):
                    width = min(used[layer], self.widths[layer])
                    if new is old:
                        continue
                    old = old.narrow(axis, 0, width)
                    new[:len(index)].narrow(axis, 0, width).copy_(old if same_rows else old.index_select(0, index))
        self.seqlens = self.fill - 1
        self._capacity = torch.tensor(self.widths, dtype=torch.int32, device=self.device)  # (L,) the graph's W
        width_of = self._capacity.to(torch.int64)  # (L,)
        self._row_start = (torch.tensor(self._slot_offsets, dtype=torch.int64, device=self.device)[:, None]
                           + torch.arange(rows, device=self.device)[None] * width_of[:, None])  # (L, B)
        # kint element (l, b, r, s) of the flat buffer sits at R * row_start[l, b] + r * W_l + s
        self._kint_start = ((self.kint_dim * self._row_start)[:, :, None]
                            + torch.arange(self.kint_dim, device=self.device) * width_of[:, None, None])  # (L, B, R)
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, total)
        self.version += 1

    def _resize(self, widths: list[int]) -> None:
        """Reallocate to per-layer `widths` (every row's fill must fit)."""
        self._allocate(self.rows, widths, torch.arange(self.rows))

    def _roomy(self, needed: int) -> int:
        """The width a layer gets when it must hold `needed` slots."""
        return needed + self.limits.headroom

    def _grown(self, needed: list[int]) -> list[int]:
        """Widths for a reallocation where layer l must hold needed[l] slots: the layers that lack room, and
        those left with less than half the headroom, get the headroom (every reallocation copies the flat
        fields of all layers, so the layers about to run out grow in the same one)."""
        return [self._roomy(need) if need + self.limits.headroom // 2 > width else width
                for need, width in zip(needed, self.widths)]

    # --- rows join and leave -----------------------------------------------------------------------------
    def check_rows(self, count: int) -> None:
        """Raise CapacityError unless `count` more rows fit the batch."""
        if self.rows + count > self.limits.max_rows:
            raise CapacityError(f"the batch is full ({self.limits.max_rows} rows): wait for a request to finish")

    def start(self, rows: int, width: int) -> None:
        """Empty buffers for `rows` new rows of `width` slots in every layer (a prefill's own cache)."""
        self.tokens_seen = torch.zeros(rows, dtype=torch.int64)
        self._allocate(rows, [width] * self.num_layers)

    def add_rows(self, other: KVCacheManager) -> None:
        """Append the rows of `other` (a prefilled cache of the same model) after the current ones. All or
        nothing: a CapacityError leaves this cache as it was."""
        count = other.rows
        self.check_rows(count)
        other.compact(range(other.num_layers))
        B = self.rows
        needed = other.fill.max(1).values.tolist() if count else [0] * self.num_layers  # (L,)
        widths = [mine if theirs <= mine else self._roomy(theirs) for mine, theirs in zip(self.widths, needed)]
        self._allocate(B + count, widths, torch.arange(B))
        self.fill[:, B:] = other.fill.to(self.device)
        for field in self.fields:
            axis = self._slot_axis(field)
            for layer, (theirs, mine) in enumerate(zip(other._views[field], self._views[field])):
                mine[B:].narrow(axis, 0, needed[layer]).copy_(theirs.narrow(axis, 0, needed[layer]).to(self.device))
        self.seqlens = self.fill - 1
        self.tokens_seen = torch.cat([self.tokens_seen, other.tokens_seen])

    def remove_rows(self, keep: Tensor) -> None:
        """Keep only the rows whose index is in `keep` (R,), in that order."""
        keep = keep.to(torch.int64)
        self._allocate(len(keep), self.widths, keep)
        self.tokens_seen = self.tokens_seen.index_select(0, keep)
        self.compact_sparse_layers()

    # --- steps -------------------------------------------------------------------------------------------
    def reserve(self, count: int) -> None:
        """Before a step of `count` new tokens per row: make room after every row's fill in every layer,
        compacting full layers and growing those whose kept entries still leave no room (one host sync)."""
        fullest = self.fill.max(1).values.tolist() if self.rows else [0] * self.num_layers
        full = [layer for layer, used in enumerate(fullest) if used + count > self.widths[layer]]
        if not full:
            return
        self.compact(full)
        needed = [used + count for used in self.fill.max(1).values.tolist()]
        if any(need > width for need, width in zip(needed, self.widths)):
            self._resize(self._grown(needed))

    def begin_step(self, positions: Tensor) -> None:
        """Before a run that feeds `positions` (B, S): the new entries' slots (fill .. fill + S - 1 of every layer
        and row) become valid with their positions and guards; fill grows by S (call `reserve(S)` first)."""
        L, S = self.num_layers, positions.shape[1]
        index = (self._row_start[:, :, None] + self._slot_range(self.fill, S)).view(L, -1)  # (L, B * S) flat
        positions = positions.to(self.device).reshape(-1)  # (B * S,): the same in every layer
        self._flat["valid"].index_fill_(0, index.view(-1), True)
        if "positions" in self._flat:
            self._flat["positions"].index_put_((index,), positions)
        if "score" in self._flat:
            self._flat["score"].index_fill_(0, index.view(-1), 0.0)
        if self.guard_of is not None:
            self._flat["guard"].index_put_((index,), self.guard_of(positions))
        self.fill += S
        self.seqlens += S
        self.tokens_seen += S
        self._step_tokens = S

    def _slot_range(self, first: Tensor, count: int) -> Tensor:
        """(L, B, count) slots first .. first + count - 1 of each layer and row, from first (L, B)."""
        return first[:, :, None] if count == 1 else first[:, :, None] + torch.arange(count, device=self.device)

    def end_step(self, keep: Tensor | None, new_kint: Tensor | None) -> None:
        """After the run: `keep` the graph's validity after each query, a flat buffer from `layer_buffers((S,))`
        (the last query's is the cache's; None: the graph drops nothing); new_kint (L, B, S, R) the new entries'
        interaction keys."""
        S, self._step_tokens = self._step_tokens, None
        if S is None:
            raise PrunexError("internal: end_step without begin_step")
        if keep is not None and S == 1:
            self._flat["valid"].copy_(keep)  # one query a row: the same layout
        elif keep is not None:
            for valid, kept in zip(self._views["valid"], self._blocks(keep, (S,), ())):
                valid.copy_(kept[:, -1])
        if new_kint is not None and self.kint_dim:
            first = self.seqlens if S == 1 else self.seqlens - (S - 1)  # (L, B) seqlens = fill - 1: the last new
            slots = self._slot_range(first, S)  # (L, B, S) this step's
            index = self._kint_start[:, :, None] + slots[..., None]  # (L, B, S, R)
            self._flat["kint"].index_copy_(0, index.flatten(), new_kint.flatten())

    def compact(self, layers) -> None:
        """Pack each row's valid entries to the front of its slots (in order) in the given layers, in place.
        Slots past a row's new fill keep stale data: they are invalid, the attention never reads them and the
        decisions' MatMul reads their (real, stale) interaction keys only to mask the result."""
        layers = list(layers)
        if not layers or not self.rows:
            return
        used = self.fill.max(1).values.tolist()  # (L,) the slots any row of a layer uses
        for layer in layers:
            valid = self._views["valid"][layer].narrow(1, 0, used[layer])  # (B, U)
            order, kept = pack_kept(valid, min_width=0)  # (B, k) each
            width = order.shape[1]
            for field in (f for f in self.fields if f != "valid"):
                axis = self._slot_axis(field)
                tensor = self._views[field][layer]
                packed = gather_tokens(tensor, order, axis)  # order < used[layer]: the whole buffer may be read
                tensor.narrow(axis, 0, width).copy_(packed)
            valid.zero_()
            valid.narrow(1, 0, width).copy_(kept)
            self.fill[layer] = kept.sum(1).to(torch.int32)
        torch.sub(self.fill, 1, out=self.seqlens)
        self.compactions += len(layers)

    def compact_sparse_layers(self) -> None:
        """Compact the layers whose holes pass `max_holes` of their filled slots, then shrink each layer whose
        fullest row needs less than half of its slots (one host sync)."""
        if not self.rows:
            self._allocate(0, [0] * self.num_layers)
            return
        filled, held = torch.stack([self.fill.sum(1), self._layer_counts().sum(1)]).tolist()
        self.compact([layer for layer in range(self.num_layers)
                      if filled[layer] - held[layer] > self.limits.max_holes * filled[layer]])
        needed = [self._roomy(used) for used in self.fill.max(1).values.tolist()]
        widths = [need if 2 * need < width else width for need, width in zip(needed, self.widths)]
        if widths != self.widths:
            self._resize(widths)
