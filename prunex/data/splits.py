"""The one split rule of prunex: shuffle with a seed, then 80% train / 10% validation / 10% test."""

from __future__ import annotations

import random

from prunex.errors import PrunexError

SPLITS = ("train", "validation", "test")
_FRACTIONS = (0.8, 0.1, 0.1)


def split_indices(count: int, split: str, seed: int = 0) -> list[int]:
    """Indices (in shuffled order) of the items of `split` among `count` items."""
    if split not in SPLITS:
        raise PrunexError(f"unknown split {split!r}; use one of {SPLITS}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_train, n_val = int(count * _FRACTIONS[0]), int(count * _FRACTIONS[1])
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, None)}
    start, stop = bounds[split]
    return order[start:stop]
