"""A fixed KV budget: how many cached tokens a query may keep, and a learned policy held to it.

`--kv-budget F` is a fraction of the causal key/value entries of a context of T tokens (the measure
`prunex eval ppl` reports: kept pairs / causal pairs, averaged over layers and positions); a policy that keeps
at most N tokens per query keeps sum_n min(n, N) / sum_n n of them, so F is turned into the N that reaches it.
`--kv-tokens N` gives N directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.prune.policy import Decisions, KeepPolicy, cumulate, sink_mask


def kept_fraction_for_tokens(kv_tokens: int, context: int) -> float:
    """Fraction of the causal (query, key) pairs of a `context`-token window kept by a cap of `kv_tokens`."""
    n = min(kv_tokens, context)
    kept = n * (n + 1) / 2 + (context - n) * n
    return kept / (context * (context + 1) / 2)


def tokens_for_kept_fraction(fraction: float, context: int) -> int:
    """The smallest cap N whose kept fraction over a `context`-token window reaches `fraction` (0 < F <= 1)."""
    if not 0 < fraction <= 1:
        raise PrunexError(f"--kv-budget must be in (0, 1], got {fraction}")
    # kept(N) = (N (2T - N + 1) / 2) / (T (T + 1) / 2): solve N^2 - (2T + 1) N + F T (T + 1) = 0, smaller root
    b = 2 * context + 1
    root = (b - math.sqrt(max(b * b - 4 * fraction * context * (context + 1), 0.0))) / 2
    tokens = max(1, math.floor(root))
    while kept_fraction_for_tokens(tokens, context) < fraction - 1e-12:
        tokens += 1
    return tokens


def budget_tokens(kv_budget: float | None, kv_tokens: int | None, context: int) -> int:
    """The per-query cap from exactly one of --kv-budget (fraction over `context`) and --kv-tokens."""
    if (kv_budget is None) == (kv_tokens is None):
        raise PrunexError("give exactly one of --kv-budget (a fraction) and --kv-tokens (a count)")
    if kv_tokens is not None:
        if kv_tokens < 1:
            raise PrunexError(f"--kv-tokens must be at least 1, got {kv_tokens}")
        return kv_tokens
    return tokens_for_kept_fraction(kv_budget, context)


def newest_within(keep: Tensor, causal: Tensor, sinks: Tensor, room: int) -> Tensor:
    """keep (B, S, K) bool over keys ordered by position -> the same with, per query, only the `room` newest
    kept non-sink keys among the causal ones (sinks stay; non-causal entries pass through unchanged)."""
    counted = keep & causal & ~sinks
    newer_or_same = counted.flip(-1).to(torch.int32).cumsum(-1).flip(-1)  # (B, S, K) kept keys at >= j
    return keep & (~causal | sinks | (newer_or_same <= room))


@dataclass
class BudgetedPolicy(KeepPolicy):
    """A policy's own decisions, then a cap of `kv_tokens` per query on what is left: the `sink_tokens` first
    tokens stay and the newest kept tokens fill the rest (so a learned policy can be compared at equal budget)."""

    inner: KeepPolicy
    kv_tokens: int
    sink_tokens: int = 4

    def __post_init__(self) -> None:
        if self.kv_tokens <= self.sink_tokens:
            raise PrunexError(f"the budget ({self.kv_tokens} tokens) must exceed the sinks ({self.sink_tokens})")
        self.state_dim = self.inner.state_dim

    def states(self, layer: int, x: Tensor):
        return self.inner.states(layer, x)

    def step_keep(self, layer, query_state, key_state, query_positions, key_positions, alpha) -> Tensor:
        return self.inner.step_keep(layer, query_state, key_state, query_positions, key_positions, alpha)

    def decide(self, layer: int, x: Tensor, positions: Tensor, valid: Tensor, past_state: Tensor | None = None,
               past_positions: Tensor | None = None, alpha: float = math.inf) -> Decisions:
        if not math.isinf(alpha):
            raise PrunexError("a KV budget applies to hard decisions (evaluation and generation), not training")
        inner = self.inner.decide(layer, x, positions, valid, past_state, past_positions, alpha)
        P = 0 if inner.keep_past is None else inner.keep_past.shape[-1]
        S = positions.shape[1]
        keep = inner.keep_new if inner.keep_past is None else torch.cat([inner.keep_past, inner.keep_new], -1)
        key_positions = positions if past_positions is None else torch.cat([past_positions, positions], 1)
        causal = key_positions[:, None, :] <= positions[:, :, None]  # (B, S, P+S)
        capped = newest_within(keep, causal, sink_mask(key_positions, self.sink_tokens)[:, None, :],
                               self.kv_tokens - self.sink_tokens)
        capped = cumulate(capped, valid[:, :, None])  # a token capped away stays away
        keep_past = None if inner.keep_past is None else capped[..., :P]
        return Decisions(keep_past, capped[..., P:P + S], inner.state)
