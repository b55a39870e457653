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
from prunex.prune.dcp import DCPPolicy

PER_LAYER_IN = 5  # past key, value, kint, valid, pos


class DecoderStep(nn.Module):
    """A step of `adapter`'s model under `policy` (None: dense, keep = valid)."""

    def __init__(self, adapter: DecoderAdapter, policy: DCPPolicy | None) -> None:
        super().__init__()
        self.adapter = adapter
        self.base = adapter.model  # registered: its weights become the graph's initializers
        self.policy = policy  # likewise for the DCP projections (None for dense)

    def _decisions(self, layer: int, x: Tensor, position_ids: Tensor, input_valid: Tensor, past_kint: Tensor,
                   past_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cumulative keep of past keys (B, S, P) and new keys (B, S, S) per query, and the new kint (B, S, R).

        A query drops a key when its keep logit is <= 0 and the key is not protected (sinks, recent); a dropped
        key stays dropped for later queries; padded queries drop nothing; a key is never dropped by itself.
        """
        B, S, _ = x.shape
        P = past_kint.shape[1]
        if self.policy is None:
            return (torch.ones(B, S, P, dtype=torch.bool, device=x.device),
                    torch.ones(B, S, S, dtype=torch.bool, device=x.device), x.new_zeros(B, S, 0))
        policy = self.policy
        q_int, new_kint = policy.q_int[layer](x), policy.k_int[layer](x)  # (B, S, r) each
        query_pos = position_ids[:, :, None]  # (B, S, 1)
        keep_step_past = (policy.logits(layer, q_int, past_kint) > 0) | policy.protected(
            query_pos, past_pos[:, None, :])  # (B, S, P)
        keep_step_new = (policy.logits(layer, q_int, new_kint) > 0) | policy.protected(
            query_pos, position_ids[:, None, :])  # (B, S, S)
        index = torch.arange(S, device=x.device)
        earlier = index[None, :, None] > index[None, None, :]  # (1, S, S) key before query
        live_query = input_valid[:, :, None]  # (B, S, 1)
        drop_past = (~keep_step_past & live_query).to(torch.int32)
        drop_new = (~keep_step_new & earlier & live_query).to(torch.int32)
        return drop_past.cumsum(1) == 0, drop_new.cumsum(1) == 0, new_kint

    def forward(self, input_ids: Tensor, position_ids: Tensor, input_valid: Tensor, logit_index: Tensor,
                *past: Tensor):
        adapter = self.adapter
        B, S = input_ids.shape
        KV = adapter.num_kv_heads
        G = adapter.num_heads // KV  # query heads per KV head
        hidden = adapter.embed(input_ids, position_ids)  # (B, S, d)
        rope = adapter.position_context(hidden, position_ids)
        index = torch.arange(S, device=hidden.device)
        causal = index[None, None, :] <= index[None, :, None]  # (1, S, S)
        outputs: list[Tensor] = []
        for layer in range(adapter.num_layers):
            past_k, past_v, past_kint, past_valid, past_pos = past[PER_LAYER_IN * layer: PER_LAYER_IN * (layer + 1)]
            P = past_k.shape[2]
            x = adapter.attention_input(layer, hidden)
            q, k, v = adapter.qkv(layer, x, rope)  # (B, H, S, D), (B, KV, S, D) x2
            keep_past, keep_new, new_kint = self._decisions(layer, x, position_ids, input_valid, past_kint, past_pos)
            keep_past = keep_past & past_valid[:, None, :]  # (B, S, P)
            keep_new = keep_new & input_valid[:, None, :]  # (B, S, S)
            see_new = (keep_new & causal) | (index[None, :, None] == index[None, None, :])  # itself, always
            # GQA without copying the cache: the G query heads of a KV head become G*S rows of one matmul.
            q_rows = q.reshape(B, KV, G * S, -1)  # (B, KV, G*S, D)
            scale = adapter.attention_scale(layer)
            scores_past = (q_rows @ past_k.transpose(-1, -2)) * scale  # (B, KV, G*S, P)
            scores_new = (q_rows @ k.transpose(-1, -2)) * scale  # (B, KV, G*S, S)
            mask = torch.cat([keep_past, see_new], dim=-1)  # (B, S, P+S)
            mask = mask[:, None].expand(B, G, S, P + S).reshape(B, 1, G * S, P + S)
            scores = torch.cat([scores_past, scores_new], dim=-1)  # (B, KV, G*S, P+S)
            probs = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
            attended = probs[..., :P] @ past_v + probs[..., P:] @ v  # (B, KV, G*S, D)
            attended = attended.reshape(B, KV * G, S, -1).transpose(1, 2).reshape(B, S, -1)  # (B, S, H*D)
            hidden = hidden + adapter.attention_output(layer, attended)
            hidden = adapter.mlp_block(layer, hidden)
            # Padded queries drop nothing, so the last query's row holds every row's final decisions.
            new_k, new_v, new_kint_out, new_valid, _, new_pos = torch.ops.prunex.kv_compact(
                k, v, new_kint, keep_new[:, -1], position_ids
            )
            outputs += [keep_past[:, -1], new_k, new_v, new_kint_out, new_valid, new_pos]
        wanted = hidden.gather(1, logit_index[:, :, None].expand(B, logit_index.shape[1], hidden.shape[-1]))
        return (adapter.logits(wanted), *outputs)  # logits (B, K, vocab)
