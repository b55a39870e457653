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

    def _keep(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        recent = query_positions - key_positions < self.window - self.sink_tokens
        return recent | sink_mask(key_positions, self.sink_tokens)

    def full(self, layer: int, x: Tensor, positions: Tensor, alpha: float) -> tuple[Tensor, None]:
        keep = self._keep(positions[:, :, None], positions[:, None, :])  # (B, T, T)
        return keep.to(x.dtype), None

    def step(
        self, layer: int, x: Tensor, position: Tensor, cached_state: Tensor | None, cached_positions: Tensor
    ) -> tuple[Tensor, None]:
        return self._keep(position[:, None], cached_positions), None
