"""The skeleton both trainers share: a fixed shuffled order of examples, consecutive batches of it, one
optimizer step per batch, the figures of every step on a progress bar (stderr)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from prunex.train.progress import TrainProgress


def shuffled_order(count: int, seed: int) -> list[int]:
    """A fixed permutation of `count` example indices."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def batch_at(order: Sequence[int], step: int, batch_size: int) -> list[int]:
    """The examples of `step`: the step-th slice of `order`, wrapping around (epochs follow each other)."""
    return [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]


def run_steps(steps: int, step: Callable[[int], dict[str, float]], show_progress: bool = True, *,
              start: int = 0, history: list[dict[str, float]] | None = None,
              after_step: Callable[[int, list[dict[str, float]]], None] | None = None,
              ) -> tuple[list[dict[str, float]], float]:
    """Call `step(i)` for i in start..steps-1 (each returns its figures), then `after_step(i + 1, history)`;
    returns the figures (`history`, those of a resumed run's earlier steps first) and the seconds taken."""
    started = time.time()
    history = list(history or [])
    with TrainProgress(steps, enabled=show_progress, start=start) as progress:
        for index in range(start, steps):
            figures = step(index)
            history.append(figures)
            progress.update(figures)
            if after_step is not None:
                after_step(index + 1, history)
    return history, time.time() - started
