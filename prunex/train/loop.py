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


def run_steps(steps: int, step: Callable[[int], dict[str, float]], show_progress: bool = True,
              ) -> tuple[list[dict[str, float]], float]:
    """Call `step(i)` for i in 0..steps-1 (each returns its figures); returns the figures and the seconds taken."""
    started = time.time()
    history: list[dict[str, float]] = []
    with TrainProgress(steps, enabled=show_progress) as progress:
        for index in range(steps):
            figures = step(index)
            history.append(figures)
            progress.update(figures)
    return history, time.time() - started
