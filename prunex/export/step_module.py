"""The decoder step as one torch module to export: prefill or decode, with in-graph KV compaction.

Inputs: input_ids, position_ids (B, S) int64, input_valid (B, S) bool (right padding), then per layer
past_key, past_value (B, KV, P, D), past_kint (B, P, R), past_valid (B, P) bool, past_pos (B, P) int64.
Outputs: logits (B, S, vocab), then per layer present_key, present_value (B, KV, W, D), present_kint (B, W, R),
present_valid (B, W) bool, present_pos (B, W) int64, compacted by `prunex::KVCompact`.

The keep decisions generalise both PyTorch paths of `PrunedLM`: with an empty past and S > 1 they are
`run_full`'s hard cumulative decisions (the cache keeps the row of each row's last real token); with S = 1 they
are `DCPPolicy.step`. Supported: right-padded prefill with an empty past, and S = 1 decode steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunex.models.adapters import DecoderAdapter
from prunex.prune.dcp import DCPPolicy

PER_LAYER = 5  # key, value, kint, valid, pos


class DecoderStep(nn.Module):
    """A decode/prefill step of `adapter`'s model under `policy` (None: dense, keep = valid)."""

    def __init__(self, adapter: DecoderAdapter, policy: DCPPolicy | None) -> None:
        super().__init__()
        self.adapter = adapter
        self.base = adapter.model  # registered: its weights become the graph's initializers
        self.policy = policy  # likewise for the DCP projections (None for dense)

    def _keep(self, layer: int, x: Tensor, past_kint: Tensor, position_ids: Tensor, key_pos: Tensor,
              later: Tensor) -> tuple[Tensor, Tensor]:
        """Cumulative keep (B, S, N) of every key for every new query, and the keys' state (B, N, R)."""
        B, S, _ = x.shape
        N = key_pos.shape[1]
        if self.policy is None:
            kint = torch.cat([past_kint, x.new_zeros(B, S, past_kint.shape[-1])], dim=1)  # (B, N, R)
            return torch.ones(B, S, N, dtype=torch.bool, device=x.device), kint
        q_int = self.policy.q_int[layer](x)  # (B, S, r)
        kint = torch.cat([past_kint, self.policy.k_int[layer](x)], dim=1)  # (B, N, r)
        step = self.policy.logits(layer, q_int, kint) > 0  # (B, S, N)
        step = step | self.policy.protected(position_ids[:, :, None], key_pos[:, None, :])
        drop = (~step & later).to(torch.int32)  # (B, S, N) query s drops key j (j before s)
        return drop.cumsum(dim=1) == 0, kint  # a dropped key stays dropped for later queries

    def forward(self, input_ids: Tensor, position_ids: Tensor, input_valid: Tensor, *past: Tensor):
        adapter = self.adapter
        B, S = input_ids.shape
        hidden = adapter.embed(input_ids, position_ids)  # (B, S, d)
        rope = adapter.position_context(hidden, position_ids)
        last = (input_valid.to(torch.int64).sum(-1) - 1).clamp_min(0)  # (B,) last real new token
        groups = adapter.num_heads // adapter.num_kv_heads
        presents: list[Tensor] = []
        for layer in range(adapter.num_layers):
            past_k, past_v, past_kint, past_valid, past_pos = past[PER_LAYER * layer: PER_LAYER * (layer + 1)]
            x = adapter.attention_input(layer, hidden)
            q, k, v = adapter.qkv(layer, x, rope)  # (B, H, S, D), (B, KV, S, D) x2
            keys = torch.cat([past_k, k], dim=2)  # (B, KV, N, D)
            values = torch.cat([past_v, v], dim=2)  # (B, KV, N, D)
            key_valid = torch.cat([past_valid, input_valid], dim=1)  # (B, N)
            key_pos = torch.cat([past_pos, position_ids], dim=1)  # (B, N)
            P, N = past_k.shape[2], keys.shape[2]
            key_index = torch.arange(N, device=x.device)[None, :]  # (1, N)
            query_index = (torch.arange(S, device=x.device) + P)[:, None]  # (S, 1)
            keep, kint = self._keep(layer, x, past_kint, position_ids, key_pos, key_index < query_index)
            mask = keep & (key_index <= query_index) & key_valid[:, None, :]  # (B, S, N)
            mask = mask | (key_index == query_index)  # a query always sees itself (no empty padded rows)
            scores = q @ keys.repeat_interleave(groups, dim=1).transpose(-1, -2)  # (B, H, S, N)
            scores = scores * adapter.attention_scale(layer)
            scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
            attended = scores.softmax(-1) @ values.repeat_interleave(groups, dim=1)  # (B, H, S, D)
            hidden = hidden + adapter.attention_output(layer, attended.transpose(1, 2).reshape(B, S, -1))
            hidden = adapter.mlp_block(layer, hidden)
            keep_last = keep.gather(1, last[:, None, None].expand(B, 1, N))[:, 0] & key_valid  # (B, N)
            k_out, v_out, kint_out, valid_out, _, pos_out = torch.ops.prunex.kv_compact(
                keys, values, kint, keep_last, key_pos
            )
            presents += [k_out, v_out, kint_out, valid_out, pos_out]
        return (adapter.logits(hidden), *presents)
