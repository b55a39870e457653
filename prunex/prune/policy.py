"""What every KV-keep policy provides: decisions for a full sequence and for one new token.

A policy decides, per layer, which past tokens stay in the K/V cache. Decisions are cumulative: once a
token is dropped from a layer it never comes back, and a token never drops itself. Shapes: B batch,
T tokens, Tc cached tokens, d hidden, r interaction width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class KeepPolicy(ABC):
    """Base class: a policy writes only its scoring; prunex owns the cache mechanics."""

    #: width of the per-token state a policy keeps beside K/V in the cache (0 = none)
    state_dim: int = 0

    @abstractmethod
    def full(self, layer: int, x: Tensor, positions: Tensor, alpha: float) -> tuple[Tensor, Tensor | None]:
        """Keep decisions for a whole sequence.

        x: (B, T, d) attention input of `layer`; positions: (B, T) logical positions.
        Returns keep (B, T, T): keep[b, n, j] = probability that key j is still cached when query n
        attends (1 on the diagonal; above it, anything: callers apply the causal mask), and the per-token
        state to cache, (B, T, state_dim) or None.
        """

    @abstractmethod
    def step(
        self, layer: int, x: Tensor, position: Tensor, cached_state: Tensor | None, cached_positions: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Hard decisions when one new token arrives.

        x: (B, 1, d) attention input of the new token; position: (B,) its logical position;
        cached_state: (B, Tc, state_dim) or None; cached_positions: (B, Tc).
        Returns keep (B, Tc) bool for the cached tokens and the new token's state (B, 1, state_dim) or None.
        """


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
    if not step_keep.requires_grad and bool(((step_keep == 0) | (step_keep == 1)).all()):
        # Hard decisions: a running minimum is the product, exactly.
        hard = torch.where(later, step_keep, torch.ones_like(step_keep))
        return hard.cummin(dim=-2).values
    log_keep = torch.where(later, step_keep.clamp_min(1e-30).log(), torch.zeros_like(step_keep))
    return log_keep.cumsum(dim=-2).exp()
