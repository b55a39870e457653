"""DecodeIO: the bound inputs and outputs of decode steps, kept between steps while the batch is unchanged.

A decode step's io are the token and position of each row, the cache's slot buffers (read in place) and the
outputs: logits, each layer's keep mask and new entry. All live in torch tensors bound once by pointer; only a
layer whose buffers were reallocated (grown or compacted) is bound again, so a step costs ONNX Runtime's run
and a few small copies, not hundreds of binding calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunex.format import CACHE_FIELDS, DecoderManifest
from prunex.runtime.kv_cache import KVCacheManager
from prunex.runtime.session import Binder


class DecodeIO:
    """Bindings for decode steps of `rows` rows; build a new one when the rows change."""

    def __init__(self, session, manifest: DecoderManifest, rows: int, device: torch.device,
                 graph_inputs: set[str]) -> None:
        m, B = manifest, rows
        self.manifest, self.rows, self.device, self.graph_inputs = manifest, rows, device, graph_inputs
        self.binder = Binder(session, device)
        self.token_ids = torch.zeros(B, 1, dtype=torch.int64, device=device)
        self.positions = torch.zeros(B, 1, dtype=torch.int64, device=device)
        self.logits = torch.empty(B, 1, m.vocab_size, device=device)
        self.binder.input(m.inputs["input_ids"], self.token_ids)
        self.binder.input(m.inputs["position_ids"], self.positions)
        self.binder.input(m.inputs["input_valid"], torch.ones(B, 1, dtype=torch.bool, device=device))
        self.binder.input(m.inputs["logit_index"], torch.zeros(B, 1, dtype=torch.int64, device=device))
        self.binder.output(m.logits, self.logits)
        KV, D, R = m.num_kv_heads, m.head_dim, m.interaction_dim
        self.new: list[dict[str, Tensor]] = []  # per layer: the step's new entry (B, ..., 1, ...)
        for layer in range(m.num_layers):
            new = {"key": torch.empty(B, KV, 1, D, device=device), "value": torch.empty(B, KV, 1, D, device=device),
                   "kint": torch.empty(B, 1, R, device=device),
                   "valid": torch.empty(B, 1, dtype=torch.bool, device=device),
                   "positions": torch.empty(B, 1, dtype=torch.int64, device=device)}
            for f in CACHE_FIELDS:
                self.binder.output(m.name(m.new[f], layer), new[f])
            self.new.append(new)
        self.keep: list[Tensor | None] = [None] * m.num_layers  # per layer (B, W): the step's keep_past
        self._bound: list[tuple | None] = [None] * m.num_layers  # per layer: pointers and width bound

    def bind_cache(self, cache: KVCacheManager) -> None:
        """(Re)bind the layers whose slot buffers changed since the last step."""
        m = self.manifest
        for layer, slots in enumerate(cache.layers):
            buffers = slots.tensors()
            signature = (slots.width, *(t.data_ptr() for t in buffers))
            if signature == self._bound[layer]:
                continue
            for f, tensor in zip(CACHE_FIELDS, buffers):
                name = m.name(m.past[f], layer)
                if name in self.graph_inputs:
                    self.binder.input(name, tensor)
            self.keep[layer] = torch.empty(self.rows, slots.width, dtype=torch.bool, device=self.device)
            self.binder.output(m.name(m.keep_past, layer), self.keep[layer])
            self._bound[layer] = signature
