"""StepIO: the bound inputs and outputs of graph runs of `rows` rows x `seq` new tokens, kept between runs.

A run's io are the tokens and positions of each row, the cache's slot buffers (read in place; the attention's
present key / value are bound to the same memory, so the graph writes the new entries into them), and the
outputs: logits at `logit_index`, each layer's keep mask and the new interaction keys. All live in torch
tensors bound by pointer; the cache is bound again only when its buffers were reallocated, so a decode step
costs ONNX Runtime's run and a few small copies, not hundreds of binding calls.
"""

from __future__ import annotations

import torch

from prunex.format import DecoderManifest
from prunex.runtime.session import Binder
from prunex.runtime.slot_cache import KVCacheManager


class StepIO:
    """Bindings for runs of `rows` x `seq` tokens with `wanted` logits per row; build a new one when a size
    changes."""

    def __init__(self, session, manifest: DecoderManifest, rows: int, seq: int, wanted: int,
                 device: torch.device) -> None:
        m, B = manifest, rows
        self.manifest, self.rows, self.seq, self.device = manifest, rows, seq, device
        self.binder = Binder(session, device)
        self.token_ids = torch.zeros(B, seq, dtype=torch.int64, device=device)
        self.positions = torch.zeros(B, seq, dtype=torch.int64, device=device)
        self.logit_index = torch.arange(seq - wanted, seq, device=device).expand(B, wanted).contiguous()
        self.logits = torch.empty(B, wanted, m.vocab_size, device=device)
        self.binder.input(m.inputs["input_ids"], self.token_ids)
        self.binder.input(m.inputs["position_ids"], self.positions)
        self.binder.input(m.inputs["logit_index"], self.logit_index)
        self.binder.output(m.logits, self.logits)
        R = m.interaction_dim
        self.new_kint = torch.empty(m.num_layers, B, seq, R, device=device) if R else None  # (L, B, S, R)
        # Per-slot outputs, allocated with the cache's layer widths (`KVCacheManager.layer_buffers`):
        self.keep: torch.Tensor | None = None  # DCP: flat; layer l's block (B, S, W_l), validity after each query
        self.attention: list[torch.Tensor] | None = None  # when exported: (B, H, S, W_l) per layer
        self._bound: int | None = None

    def bind_cache(self, cache: KVCacheManager) -> None:
        """(Re)bind the cache's buffers if they changed since the last run."""
        if cache.version == self._bound:
            return
        m = self.manifest
        if m.interaction_dim:
            self.keep, keep = cache.layer_buffers((self.seq,), torch.bool)
        if m.attention:
            _, self.attention = cache.layer_buffers((m.num_heads, self.seq), torch.float32)
        for layer in range(m.num_layers):
            inputs = cache.graph_inputs(layer)
            for f in m.past_fields():
                self.binder.input(m.name(m.past[f], layer), inputs[f])
            for f in ("key", "value"):
                self.binder.output(m.name(m.present[f], layer), inputs[f])  # the same memory: in place
            if m.attention:
                self.binder.output(m.name(m.attention, layer), self.attention[layer])
            if m.interaction_dim:
                self.binder.output(m.name(m.keep, layer), keep[layer])
                self.binder.output(m.name(m.new_kint, layer), self.new_kint[layer])
        self._bound = cache.version
