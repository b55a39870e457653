"""The one decoder layer loop under a keep policy, shared by training, evaluation, step-wise generation and export.

A run feeds S new tokens per row (right-padded, `valid`) at their logical positions, over an optional read-only
past of P cached entries per layer (`LayerCache`, valid entries marked). Each layer asks the policy which past
and new entries every new query keeps (`KeepPolicy.decide`), attends over [past ; new] under those decisions and
returns the new tokens' K/V with the decisions; what to do with them (count them, build a cache, compact them in
the graph) is the caller's: `prune.forward.run_full` (whole sequences), `PrunedLM.decode_step` (one token over
a physically pruned cache), `export.validate` (the reference the fused ONNX graph is checked against).

Soft decisions (alpha < inf, training) enter attention as log(keep) added to the logits, as in DCP; hard ones as
a boolean mask. A `HeadPolicy` decides per K/V head: each layer then runs with the K/V heads folded into the
batch axis (R = B * KV rows of one K/V head and G query heads each), and its `LayerRun` and past are folded.
Shapes: B batch, S new tokens, P past entries, H query heads, KV key/value heads, G = H / KV,
D head dim, d hidden, r policy state width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prunex.models.adapters import DecoderAdapter
from prunex.prune.attention_policy import AttentionPolicy
from prunex.prune.policy import HeadPolicy, PruningPolicy
from prunex.prune.pruned_cache import LayerCache
from prunex.tensors import fold_heads, repeat_rows


@dataclass
class LayerRun:
    """What one layer leaves: the new tokens' entries and the keep decisions of the new queries."""

    k: Tensor  # (B, KV, S, D) keys of the new tokens, positions applied ((R, 1, S, D) folded per head)
    v: Tensor  # (B, KV, S, D)
    state: Tensor | None  # (B, S, r) policy state of the new tokens (DCP: k_int), or None
    keep_past: Tensor | None  # (B, S, P) past entry j kept for query n (valid entries only); None without past
    keep_new: Tensor  # (B, S, S) new key j kept for query n (causal, real keys only; bool or probability)
    past_state: Tensor | None = None  # (B, P, r) the past entries' state updated by the policy (H2O scores)


@dataclass
class DecoderRun:
    hidden: Tensor  # (B, S, d) final hidden states, before the LM head
    layers: list[LayerRun]


def run_decoder(
    adapter: DecoderAdapter,
    policy: PruningPolicy | None,
    input_ids: Tensor,
    position_ids: Tensor,
    valid: Tensor,
    past: list[LayerCache] | None = None,
    alpha: float = math.inf,
    observe: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> DecoderRun:
    """Run (B, S) ids at (B, S) logical positions, `valid` (B, S) bool, over `past` (one read-only `LayerCache`
    per layer, or None). `policy=None` is the dense model (keep = valid). alpha = inf: hard decisions. An
    `AttentionPolicy` (H2O, TOVA) decides from the layer's queries and keys, after they are computed; a
    `HeadPolicy` per K/V head, over a folded past (see the module docstring). `observe(layer, x, q, k)`, when
    given, sees each layer's attention input and its queries and keys (a learned scorer's training targets)."""
    B, S = input_ids.shape
    index = torch.arange(S, device=input_ids.device)
    causal = index[None, None, :] <= index[None, :, None]  # (1, S, S) key j <= query n
    allowed = causal & valid[:, None, :]  # (B, S, S) real, causal keys
    itself = index[None, None, :] == index[None, :, None]  # (1, S, S): every query sees itself (padding too)
    hidden = adapter.embed(input_ids, position_ids)  # (B, S, d)
    rope = adapter.position_context(hidden, position_ids)
    layers: list[LayerRun] = []
    for layer in range(adapter.num_layers):
        cached = None if past is None else past[layer]
        x = adapter.attention_input(layer, hidden)
        q, k, v = adapter.qkv(layer, x, rope)  # (B, H, S, D), (B, KV, S, D) x2
        if observe is not None:
            observe(layer, x, q, k)
        keep_past = past_state = None
        if isinstance(policy, HeadPolicy):
            heads = k.shape[1]
            q = q.reshape(B * heads, -1, S, q.shape[-1])  # (R, G, S, D): query head i reads K/V head i // G
            k, v = fold_heads(k, heads), fold_heads(v, heads)  # (R, 1, S, D)
            decisions = policy.decide_heads(layer, x, q, k, repeat_rows(position_ids, heads),
                                            repeat_rows(valid, heads), cached, adapter.attention_scale(layer))
            keep_new, state = _restrict(decisions.keep_new, repeat_rows(allowed, heads)), decisions.state
            past_state = decisions.past_state  # an attention rule rescores its cached entries
            if cached is not None:
                keep_past = _restrict(decisions.keep_past, cached.valid[:, None, :])
        elif policy is None:
            keep_new, state = allowed, None
            if cached is not None:
                keep_past = cached.valid[:, None, :].expand(B, S, -1)  # (B, S, P)
        else:
            if isinstance(policy, AttentionPolicy):
                decisions = policy.decide_attention(q, k, position_ids, valid, cached, adapter.attention_scale(layer))
                past_state = decisions.past_state
            else:
                decisions = policy.decide(layer, x, position_ids, valid, None if cached is None else cached.state,
                                          None if cached is None else cached.positions, alpha)
            keep_new, state = _restrict(decisions.keep_new, allowed), decisions.state
            if cached is not None:
                keep_past = _restrict(decisions.keep_past, cached.valid[:, None, :])
        window = adapter.attention_window(layer)
        if window is not None:  # a sliding-window layer: keys W or more positions back leave its cache
            rows = keep_new.shape[0] // B  # K/V heads folded into the rows by a per-head policy, else 1
            query_positions = repeat_rows(position_ids, rows)[:, :, None]  # (R, S, 1)
            keep_new = _restrict(keep_new, query_positions - repeat_rows(position_ids, rows)[:, None, :] < window)
            if cached is not None:
                keep_past = _restrict(keep_past, query_positions - cached.positions[:, None, :] < window)
        if keep_new.dtype == torch.bool:
            mask_new, mask_past = keep_new | itself, keep_past  # (B, S, S), (B, S, P)
        else:  # soft decisions (training): log(keep) is added to the attention logits
            mask_new = _log_keep(keep_new, allowed | itself)
            mask_past = None if cached is None else _log_keep(keep_past, cached.valid[:, None, :])
        attended = _attend_sdpa(q, k, v, cached, mask_past, mask_new, adapter.attention_scale(layer))
        attended = attended.reshape(B, -1, S, attended.shape[-1])  # (B, H, S, D), heads unfolded
        hidden = hidden + adapter.attention_output(layer, attended.transpose(1, 2).reshape(B, S, -1))  # (B, S, d)
        hidden = adapter.mlp_block(layer, hidden)
        layers.append(LayerRun(k, v, state, keep_past, keep_new, past_state))
    return DecoderRun(hidden, layers)


def _restrict(keep: Tensor, allowed: Tensor) -> Tensor:
    """Decisions limited to the allowed (real, causal) keys, in the decisions' own dtype."""
    return keep & allowed if keep.dtype == torch.bool else keep * allowed


def _log_keep(keep: Tensor, visible: Tensor) -> Tensor:
    """Soft decisions as an additive attention mask: log(keep) where the key is visible, else -inf."""
    return torch.where(visible, keep.clamp_min(1e-30).log(), -math.inf)


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor, cached: LayerCache | None, mask_past: Tensor | None,
                 mask_new: Tensor, scale: float) -> Tensor:
    """PyTorch's fused attention of q (B, H, S, D) over [past ; new] -> (B, H, S, D); masks (B, S, P) and
    (B, S, S), both bool or both additive (soft decisions)."""
    keys, values, mask = k, v, mask_new
    if cached is not None:
        keys, values = torch.cat([cached.k, k], dim=2), torch.cat([cached.v, v], dim=2)  # (B, KV, P+S, D)
        mask = torch.cat([mask_past, mask_new], dim=-1)  # (B, S, P+S)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], scale=scale, enable_gqa=True)
