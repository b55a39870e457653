"""The decoder step as one torch module to export: prefill, chunked prefill and decode, one graph for all.

The past is read-only: the graph never rewrites the cache. It attends over [past ; new], decides which past
entries the new queries drop, and returns the new tokens' K/V packed by `prunex::KVCompact` (the new tokens a
prompt's own later queries drop never leave the graph). The runtime applies `keep_past` to its validity mask
and appends the new entries: its cache stays in fixed buffers and is compacted when holes pile up
(`prunex.runtime.kv_cache`), so a decode step reads the cache once and writes only the new token.

Inputs: input_ids, position_ids (B, S) int64; input_valid (B, S) bool (right padding); logit_index (B, K)
int64, the new positions whose logits are wanted; then per layer past_key, past_value (B, KV, P, D),
past_kint (B, P, R), past_valid (B, P) bool, past_pos (B, P) int64 (logical positions).
Outputs: logits (B, K, vocab); then per layer keep_past (B, P) bool, new_key, new_value (B, KV, W, D),
new_kint (B, W, R), new_valid (B, W) bool, new_pos (B, W) int64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunex.models.adapters import DecoderAdapter
from prunex.prune.decoder import run_decoder
from prunex.prune.kv_cache import LayerCache
from prunex.prune.policy import KeepPolicy

PER_LAYER_IN = 5  # past key, value, kint, valid, pos


class DecoderStep(nn.Module):
    """A step of `adapter`'s model under `policy` (None: dense, keep = valid): the shared decoder loop
    (`prunex.prune.decoder.run_decoder`, GQA as one matmul) plus `prunex::KVCompact` of the new entries."""

    def __init__(self, adapter: DecoderAdapter, policy: KeepPolicy | None) -> None:
        super().__init__()
        self.adapter = adapter
        self.base = adapter.model  # registered: its weights become the graph's initializers
        self.policy = policy  # likewise for the DCP projections (None for dense)

    def forward(self, input_ids: Tensor, position_ids: Tensor, input_valid: Tensor, logit_index: Tensor,
                *past: Tensor):
        B, S = input_ids.shape
        cache = []
        for layer in range(self.adapter.num_layers):
            key, value, kint, valid, positions = past[PER_LAYER_IN * layer: PER_LAYER_IN * (layer + 1)]
            cache.append(LayerCache(key, value, None if self.policy is None else kint, positions, valid))
        run = run_decoder(self.adapter, self.policy, input_ids, position_ids, input_valid, cache, attention="matmul")
        outputs: list[Tensor] = []
        for layer in run.layers:
            state = layer.state if layer.state is not None else layer.k.new_zeros(B, S, 0)  # (B, S, R)
            # Padded queries drop nothing, so the last query's row holds every row's final decisions.
            new_k, new_v, new_kint, new_valid, _, new_pos = torch.ops.prunex.kv_compact(
                layer.k, layer.v, state, layer.keep_new[:, -1], position_ids
            )
            outputs += [layer.keep_past[:, -1], new_k, new_v, new_kint, new_valid, new_pos]
        hidden = run.hidden
        wanted = hidden.gather(1, logit_index[:, :, None].expand(B, logit_index.shape[1], hidden.shape[-1]))
        return (self.adapter.logits(wanted), *outputs)  # logits (B, K, vocab)
