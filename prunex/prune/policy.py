"""What every KV-keep policy provides, and the mechanics prunex owns around it.

A policy decides, per layer, which cached tokens each new query keeps. It writes only its scoring
(`states`, `step_keep`); the base class turns those per-pair decisions into cumulative ones for any run of new
tokens over any read-only past (`decide`): once a token is dropped from a layer it never comes back, a token
never drops itself, and padded queries drop nothing. Shapes: B batch, S new tokens, P past (cached) entries,
K keys, d hidden, r the policy's state width.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Decisions:
    """A layer's cumulative keep decisions for S new queries (bool when hard, probabilities when soft)."""

    keep_past: Tensor | None  # (B, S, P): past entry j still cached when query n attends (None: no past)
    keep_new: Tensor  # (B, S, S): new key j still cached when query n attends (1 for j >= n)
    state: Tensor | None  # (B, S, r) the new tokens' state to cache beside K/V, or None
    past_state: Tensor | None = None  # (B, P, r) the past entries' state rescored by the queries (H2O, TOVA)


class PruningPolicy(ABC):  # noqa: B024 (a common type, no common method)
    """What every keep policy is: a rule that decides, per layer, which cached tokens each new query keeps. Two
    kinds, by what they decide from: `KeepPolicy` scores (query, key) pairs (DCP, window, sinks) and prunex makes
    the decisions cumulative; `AttentionPolicy` (`attention_policy.py`: H2O, TOVA) evicts by the attention the
    cached tokens received, one query at a time."""

    #: width of the per-token state a policy keeps beside K/V in the cache (0 = none)
    state_dim: int = 0


class HeadPolicy(PruningPolicy):
    """A policy that decides per K/V head (`prunex.prune.scorer`): the decoder loop folds the K/V heads into
    the batch axis for it (row b * KV + h is head h of sequence b), so decisions, the pruned cache and its
    compaction are per head."""

    @abstractmethod
    def decide_heads(self, layer: int, x: Tensor, q: Tensor, k: Tensor, positions: Tensor, valid: Tensor, past,
                     scale: float) -> Decisions:
        """x (B, S, d) attention input; q (R, G, S, D) and k (R, 1, S, D) the folded queries and keys (G query
        heads a K/V head), `scale` the attention's; positions, valid (R, S) per folded row; past: the layer's
        folded `LayerCache` or None -> folded decisions keep_past (R, S, P), keep_new (R, S, S), the new state
        and, for a policy that updates its cached entries' state, `past_state` (R, P, r)."""


class KeepPolicy(PruningPolicy):
    """Base class: a policy scores (query, key) pairs; prunex owns the cumulative decisions and the cache."""

    @abstractmethod
    def states(self, layer: int, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """x: (B, S, d) attention input of `layer` -> (query state, key state to cache), each (B, S, r) or None."""

    @abstractmethod
    def step_keep(self, layer: int, query_state: Tensor | None, key_state: Tensor | None, query_positions: Tensor,
                  key_positions: Tensor, alpha: float) -> Tensor:
        """(B, S, K): whether query n alone keeps key j (bool at alpha = inf, else a probability in [0, 1]).

        query_state (B, S, r) / key_state (B, K, r) as returned by `states`; logical positions shaped to
        broadcast, query_positions (B, S, 1) and key_positions (B, 1, K). Pairs the policy protects must come
        out kept.
        """

    def decide(self, layer: int, x: Tensor, positions: Tensor, valid: Tensor, past_state: Tensor | None = None,
               past_positions: Tensor | None = None, alpha: float = math.inf) -> Decisions:
        """Cumulative decisions of S new tokens x (B, S, d) at `positions` (B, S), `valid` (B, S) bool (right
        padding), over a read-only past with `past_positions` (B, P) (None: no past) and its `past_state`."""
        query_state, key_state = self.states(layer, x)
        S = x.shape[1]
        index = torch.arange(S, device=x.device)
        live = valid[:, :, None]  # (B, S, 1): padded queries drop nothing
        earlier = index[None, None, :] < index[None, :, None]  # (1, S, S): only an earlier key can be dropped
        query_positions = positions[:, :, None]  # (B, S, 1)
        step_new = self.step_keep(layer, query_state, key_state, query_positions, positions[:, None, :], alpha)
        keep_new = cumulate(step_new, earlier & live)  # (B, S, S)
        keep_past = None
        if past_positions is not None:
            step_past = self.step_keep(layer, query_state, past_state, query_positions, past_positions[:, None, :],
                                       alpha)  # (B, S, P)
            keep_past = cumulate(step_past, live)
        return Decisions(keep_past, keep_new, key_state)

    def full(self, layer: int, x: Tensor, positions: Tensor, alpha: float) -> tuple[Tensor, Tensor | None]:
        """Decisions for a whole sequence without a past, as (B, T, T) floats keep[b, n, j] (1 for j >= n),
        and the per-token state to cache (B, T, r) or None."""
        valid = torch.ones(positions.shape, dtype=torch.bool, device=x.device).expand(x.shape[:2])
        decisions = self.decide(layer, x, positions.expand(x.shape[:2]), valid, alpha=alpha)
        return decisions.keep_new.to(x.dtype), decisions.state


def cumulate(step: Tensor, applies: Tensor) -> Tensor:
    """Per-query decisions (B, S, K), taken only where `applies` (broadcastable), made cumulative along the
    queries: keep[n, j] = prod_{m <= n, applies} step[m, j], so a dropped key stays dropped.

    Hard decisions stay exact (bool: no drop so far, with ops ONNX exports; 0/1 floats without gradients: a
    running minimum); soft ones multiply in log space (differentiable).
    """
    if step.dtype == torch.bool:
        return (applies & ~step).to(torch.int32).cumsum(1) == 0
    step = torch.where(applies, step, torch.ones_like(step))
    if not step.requires_grad and bool(((step == 0) | (step == 1)).all()):
        return step.cummin(dim=1).values
    return step.clamp_min(1e-30).log().cumsum(dim=1).exp()


def sink_mask(positions: Tensor, sink_tokens: int) -> Tensor:
    """(…, T) positions -> bool mask of the attention-sink tokens (the first `sink_tokens` of a sequence)."""
    return positions < sink_tokens


def cumulative_keep(step_keep: Tensor) -> Tensor:
    """Turn per-query decisions into cumulative ones.

    step_keep: (B, T, T), step_keep[b, m, j] = probability that query m keeps key j (used for m > j).
    Returns keep (B, T, T) with keep[b, n, j] = prod_{m=j+1..n} step_keep[b, m, j] (1 for n <= j), so
    a token dropped by one query stays dropped for every later one, and nobody drops itself.
    """
    T = step_keep.shape[-1]
    later = torch.ones(T, T, dtype=torch.bool, device=step_keep.device).tril(diagonal=-1)  # m > j
    return cumulate(step_keep, later)
