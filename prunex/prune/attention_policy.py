"""Training-free policies that choose from attention probabilities: H2O (heavy hitters + recent) and TOVA.

They keep a fixed budget of `kv_tokens` cached tokens per layer and row. Each new token joins the cache; when
the cache is over budget, the unprotected cached token with the lowest score leaves before the new query
attends (so every query attends to at most `kv_tokens` entries); after attending, the scores are updated from
that query's attention probabilities (mean over heads). Protected: the newest token, the `sink_tokens` first
tokens and, for H2O, the recent window. The score of each cached token is the policy's per-token state, kept
beside K/V like DCP's k_int, so a prefill followed by step-wise decoding makes the same decisions as one
full-sequence run.

A policy may also rank tokens by a learned prior fixed when the token arrives (`rank`, the prior kept as a second
state column): `prunex.prune.scorer`'s attention rule weighs the latest query's attention with it.

The choice is sequential by nature (each eviction depends on the attention under the previous ones), so
`decide_attention` loops over the new tokens of a layer: a (B, H, S, P+S) score matrix is computed once, and
each step is a handful of small ops on (B, P+S) rows. Shapes: B batch, S new tokens, P past entries, H query
heads, KV key/value heads, D head dim.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.prune.policy import Decisions, PruningPolicy, sink_mask
from prunex.prune.pruned_cache import LayerCache


class AttentionPolicy(PruningPolicy):
    """Base class: evict the lowest-scored unprotected token whenever the cache exceeds `kv_tokens`."""

    kv_tokens: int
    sink_tokens: int
    state_dim = 1  # one score per cached token

    def _check(self, protected: int) -> None:
        if self.kv_tokens <= protected:
            raise PrunexError(f"the budget ({self.kv_tokens} tokens) must exceed the protected tokens ({protected})")

    def rank(self, scores: Tensor, prior: Tensor | None) -> Tensor:
        """(B, K) scores and the keys' prior (or None) -> (B, K): the lowest unprotected key is evicted."""
        return scores

    @abstractmethod
    def observe(self, scores: Tensor, probs: Tensor) -> Tensor:
        """scores (..., K) before S queries, probs (..., S, K) the attention each gave each key, in order (a
        key a query did not see has 0) -> the scores after them. One op for all S: a prompt is scored at once."""

    def protected(self, query_position: Tensor, key_positions: Tensor) -> Tensor:
        """(B, 1) query position, (B, K) key positions -> (B, K) keys this query may not evict."""
        return (key_positions >= query_position) | sink_mask(key_positions, self.sink_tokens)

    @torch.no_grad()
    def decide_attention(self, q: Tensor, k: Tensor, positions: Tensor, valid: Tensor, past: LayerCache | None,
                         scale: float, prior: Tensor | None = None) -> Decisions:
        """q (B, H, S, D), k (B, KV, S, D) of S new tokens at `positions` (B, S), `valid` (B, S), over `past`
        (its state holds the past entries' scores, and their prior when `prior` (B, S) is given for the new
        tokens) -> cumulative decisions and the updated state (B, K, 1), or (B, K, 2) with the prior."""
        B, H, S, _ = q.shape
        keys, key_positions = k, positions
        kept = torch.zeros(B, S, dtype=torch.bool, device=q.device)  # (B, P+S): in the cache now
        scores = torch.zeros(B, S, dtype=q.dtype, device=q.device)
        if past is not None:
            keys = torch.cat([past.k, k], dim=2)
            key_positions = torch.cat([past.positions, positions], dim=1)
            kept = torch.cat([past.valid, kept], dim=1)
            scores = torch.cat([past.state[..., 0] * past.valid, scores], dim=1)
            if prior is not None:
                prior = torch.cat([past.state[..., 1], prior], dim=1)  # (B, P+S)
        P = keys.shape[2] - S
        groups = H // keys.shape[1]
        logits = q @ keys.repeat_interleave(groups, dim=1).transpose(-1, -2) * scale  # (B, H, S, P+S)
        decided = torch.empty(B, S, P + S, dtype=torch.bool, device=q.device)  # kept set each query attends to
        rows = torch.arange(B, device=q.device)
        for n in range(S):
            joining = valid[:, n]  # (B,)
            kept[:, P + n] = joining
            candidates = kept & ~self.protected(positions[:, n:n + 1], key_positions)  # (B, P+S)
            over = joining & (kept.sum(-1) > self.kv_tokens)  # (B,)
            lowest = self.rank(scores, prior).masked_fill(~candidates, torch.inf).argmin(-1)  # (B,)
            kept[rows, lowest] &= ~over
            decided[:, n] = kept
            probs = logits[:, :, n].masked_fill(~kept[:, None], -torch.inf).softmax(-1).mean(1)  # (B, P+S)
            scores = torch.where(joining[:, None], self.observe(scores, probs[:, None]), scores)
        index = torch.arange(S, device=q.device)
        later = index[None, None, :] >= index[None, :, None]  # (1, S, S): not yet joined
        state = scores[..., None] if prior is None else torch.stack([scores, prior], -1)  # (B, P+S, 1 | 2)
        return Decisions(
            keep_past=decided[..., :P] if past is not None else None,
            keep_new=decided[..., P:] | later,
            state=state[:, P:],
            past_state=state[:, :P] if past is not None else None,
        )


@dataclass
class H2OPolicy(AttentionPolicy):
    """Heavy-Hitter Oracle (Zhang et al., 2023): keep the tokens with the most accumulated attention mass,
    plus the most recent ones (`recent_fraction` of the budget, the query's own token included)."""

    kv_tokens: int = 256
    recent_fraction: float = 0.5
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        self.recent_tokens = max(1, int(self.kv_tokens * self.recent_fraction))
        self._check(self.recent_tokens + self.sink_tokens)

    def observe(self, scores: Tensor, probs: Tensor) -> Tensor:
        return scores + probs.sum(-2)  # accumulated attention mass

    def protected(self, query_position: Tensor, key_positions: Tensor) -> Tensor:
        recent = query_position - key_positions < self.recent_tokens
        return recent | sink_mask(key_positions, self.sink_tokens)


@dataclass
class TOVAPolicy(AttentionPolicy):
    """Token Omission Via Attention (Oren et al., 2024): drop the token the latest query attended to least
    (mean over heads); only the newest token and the declared sinks are protected."""

    kv_tokens: int = 256
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        self._check(1 + self.sink_tokens)

    def observe(self, scores: Tensor, probs: Tensor) -> Tensor:
        return probs[..., -1, :]  # the latest query's attention
