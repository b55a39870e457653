"""The training-free baseline: attention sinks (the first tokens) plus a window of recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prunex.prune.policy import KeepPolicy, sink_mask


@dataclass
class WindowPolicy(KeepPolicy):
    """Keep the first `sink_tokens` and the last `window - sink_tokens` tokens (the query's own included)."""

    window: int = 256  # tokens kept per query, sinks included
    sink_tokens: int = 4

    def __post_init__(self) -> None:
        if self.window <= self.sink_tokens:
            raise ValueError(f"window ({self.window}) must be larger than sink_tokens ({self.sink_tokens})")

    def states(self, layer: int, x: Tensor) -> tuple[None, None]:
        return None, None

    def step_keep(self, layer: int, query_state: Tensor | None, key_state: Tensor | None, query_positions: Tensor,
                  key_positions: Tensor, alpha: float) -> Tensor:
        recent = query_positions - key_positions < self.window - self.sink_tokens
        return recent | sink_mask(key_positions, self.sink_tokens)  # (B, S, K) bool
