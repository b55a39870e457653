"""A learned K/V scorer: per layer and K/V head, a linear map from a token's attention input to how much
attention later queries will pay it (KVzap-style, Jegou et al. 2025 in NVIDIA's kvpress), held to a budget of
`kv_tokens` per head by one of two rules (`ScorerConfig.rule`):
- ranked: each head keeps, per query, the sinks, its most recent tokens and the best-scored older ones;
- attention: whenever a head is over budget it evicts the unprotected token (not a sink, not the newest) with
  the lowest log(attention the latest query paid it, mean over the head's query heads) + `prior_weight` x its
  learned score: TOVA's signal (Oren et al., 2024) with a learned prior of the token's future importance, both
  in log-attention units. The latest attention says what the text needs now, the prior what it will need again.

Decisions are per K/V head: a layer's heads keep different tokens (one head may stay local while another
holds on to names from far back). The decoder loop runs such a policy with the K/V heads folded into the batch
axis (`fold_heads`): row b * KV + h is head h of sequence b, with one K/V head and its G query heads, so the
physically pruned cache, its compaction and its byte count work per head unchanged.

The ranked rule is cumulative by construction: an older token is evicted once `kv_tokens - recent - sinks` older
tokens outscore it, and the set it is compared with only grows, so a dropped token never comes back. The score
is fixed when the token arrives (one matmul a layer), so a prompt is decided in one pass, with no loop over
positions. Shapes: B batch, KV K/V heads, R = B * KV folded rows, S new tokens, P past entries, K = P + S keys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunex.config import ScorerConfig
from prunex.errors import PrunexError
from prunex.prune.attention_policy import TOVAPolicy
from prunex.prune.policy import Decisions, HeadPolicy
from prunex.prune.pruned_cache import LayerCache

RULES = ("ranked", "attention")


@dataclass
class LatestAttentionWithPrior(TOVAPolicy):
    """The attention rule's eviction (over folded rows): TOVA's, ranked by log(latest attention) + weight x prior."""

    prior_weight: float = 1.0

    def rank(self, scores: Tensor, prior: Tensor | None) -> Tensor:
        return scores.clamp_min(1e-12).log() + self.prior_weight * prior


class ScorerPolicy(nn.Module, HeadPolicy):
    """Learned per-head scores held to `kv_tokens` cached tokens per head and query."""

    def __init__(self, num_layers: int, hidden_size: int, num_kv_heads: int, config: ScorerConfig | None = None,
                 kv_tokens: int = 256) -> None:
        super().__init__()
        self.config = config or ScorerConfig()
        self.weight = nn.Parameter(torch.zeros(num_layers, hidden_size, num_kv_heads))
        self.bias = nn.Parameter(torch.zeros(num_layers, num_kv_heads))
        self.kv_tokens = 0
        self.set_budget(kv_tokens)

    def set_budget(self, kv_tokens: int) -> ScorerPolicy:
        """Hold every head to `kv_tokens` cached tokens per query (sinks and recent ones included)."""
        sinks = self.config.sink_tokens
        if kv_tokens <= sinks:
            raise PrunexError(f"the budget ({kv_tokens} tokens) must exceed the sinks ({sinks})")
        if self.config.rule not in RULES:
            raise PrunexError(f"unknown scorer rule {self.config.rule!r}; rules: {', '.join(RULES)}")
        self.kv_tokens = kv_tokens
        self.recent_tokens = max(1, int((kv_tokens - sinks) * self.config.recent_fraction))
        self.evictor = LatestAttentionWithPrior(kv_tokens, sinks, self.config.prior_weight)  # the attention rule
        return self

    @property
    def state_dim(self) -> int:
        """Per cached entry: its score (ranked), or the latest attention it got and its score (attention)."""
        return 2 if self.config.rule == "attention" else 1

    def with_budget(self, kv_tokens: int) -> ScorerPolicy:
        """The same scorer (parameters shared) held to another budget."""
        return copy.copy(self).set_budget(kv_tokens)

    def scores(self, layer: int, x: Tensor) -> Tensor:
        """x (B, S, d) attention input -> (B, KV, S) predicted log-importance of each new token per head."""
        return (x @ self.weight[layer] + self.bias[layer]).transpose(1, 2)

    def decide_heads(self, layer: int, x: Tensor, q: Tensor, k: Tensor, positions: Tensor, valid: Tensor,
                     past: LayerCache | None, scale: float) -> Decisions:
        """Folded decisions: x (B, S, d); q (R, G, S, D), k (R, 1, S, D); positions and valid (R, S); past (R
        rows) holds the entries' state. Returns keep_past (R, S, P), keep_new (R, S, S) and the new tokens'
        state (R, S, 1), or (R, S, 2) and the past's rescored state with the attention rule."""
        R, S = positions.shape
        new_scores = self.scores(layer, x).reshape(R, S)
        if self.config.rule == "attention":
            return self.evictor.decide_attention(q, k, positions, valid, past, scale, prior=new_scores)
        key_scores, key_positions, key_valid = new_scores, positions, valid
        if past is not None:
            key_scores = torch.cat([past.state[..., 0], new_scores], 1)  # (R, K)
            key_positions = torch.cat([past.positions, positions], 1)
            key_valid = torch.cat([past.valid, valid], 1)
        K = key_scores.shape[1]
        sinks = key_positions < self.config.sink_tokens  # (R, K)
        candidate = key_valid & ~sinks  # keys the learned choice is about
        index = torch.arange(K, device=x.device)
        outscores = (key_scores[:, :, None] > key_scores[:, None, :]) | (
            (key_scores[:, :, None] == key_scores[:, None, :]) & (index[:, None] > index[None, :]))  # (R, i, j)
        outscored_by = (outscores & candidate[:, :, None]).to(torch.int32).cumsum(1)  # (R, K, K): among keys <= i
        # The older keys a query compares: valid, at least `recent` positions back; valid keys are in position
        # order, so they are the candidates up to the last such index.
        oldest_allowed = positions[:, :, None] - self.recent_tokens  # (R, S, 1)
        older = key_valid[:, None, :] & (key_positions[:, None, :] <= oldest_allowed)  # (R, S, K)
        last_older = (older * (index + 1)).amax(-1) - 1  # (R, S); -1: none yet
        rank = outscored_by.gather(1, last_older.clamp_min(0)[..., None].expand(R, S, K))  # (R, S, K)
        rank = rank * (last_older >= 0)[..., None]
        room = self.kv_tokens - self.recent_tokens - self.config.sink_tokens
        recent = positions[:, :, None] - key_positions[:, None, :] < self.recent_tokens  # (R, S, K)
        keep = sinks[:, None, :] | recent | (rank < room)
        P = K - S
        return Decisions(keep[..., :P] if past is not None else None, keep[..., P:], new_scores[..., None])

