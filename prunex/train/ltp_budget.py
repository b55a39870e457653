"""How long each LTP stage trains, when the dense stage stops, and the check that a stage learned anything.

Stage lengths are counted in epochs over the training split, so a task of 2,000 long articles and one of
10,000 snippets both get a budget that fits them: the base stage runs up to `base_epochs` and stops on
validation accuracy (checked every `check_epochs`, best weights kept); the soft and hard stages run
`prune_epochs` each. On long inputs an epoch is costly, so the interval between checks and the soft and hard
stages are also capped at `max_tokens` training tokens (a CPU-sized budget: ~100k tokens is ~4 minutes of
MiniLM on one core); every stage gets at least `min_steps` steps, so a small file still trains.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from prunex.errors import PrunexError


@dataclass
class StageBudget:
    """Optimizer steps of one stage and, for the base stage, how often validation is checked."""

    steps: int
    check_every: int = 0  # steps between validation checks (0: only at the end)
    patience: int = 0  # checks without improvement before stopping (0: never stop early)


def stage_budget(
    stage: str, examples: int, batch_size: int, *, steps: int, base_epochs: float, prune_epochs: float,
    check_epochs: float, min_steps: int, patience: int, mean_tokens: float = 0.0, max_tokens: int = 0,
) -> StageBudget:
    """The budget of `stage` for a training split of `examples` rows of `mean_tokens` tokens on average;
    `steps` > 0 fixes it (no early stopping); `max_tokens` > 0 caps check intervals and the pruning stages."""
    if steps > 0:
        return StageBudget(steps)
    per_epoch = examples / batch_size
    token_cap = math.ceil(max_tokens / (mean_tokens * batch_size)) if max_tokens and mean_tokens else math.inf

    def capped(epochs: float) -> int:
        return max(min_steps, min(math.ceil(epochs * per_epoch), token_cap))

    if stage != "base":
        return StageBudget(capped(prune_epochs))
    total = max(min_steps, math.ceil(base_epochs * per_epoch))
    return StageBudget(total, check_every=min(capped(check_epochs), total), patience=patience)


class EarlyStopping:
    """Tracks validation accuracy at each check; says when `patience` checks in a row brought no gain."""

    def __init__(self, patience: int, min_gain: float = 0.0) -> None:
        self.patience, self.min_gain = patience, min_gain
        self.best = -1.0
        self.best_step = 0
        self.stale = 0
        self.history: list[tuple[int, float]] = []

    def update(self, step: int, accuracy: float) -> bool:
        """Record a check; True when `accuracy` is the best so far (the caller keeps those weights)."""
        self.history.append((step, accuracy))
        if accuracy > self.best + self.min_gain:
            self.best, self.best_step, self.stale = accuracy, step, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience


def majority_share(labels: Sequence[int], reference: Sequence[int]) -> tuple[int, float]:
    """The most common label of `reference` (the training split) and its share among `labels`."""
    label = Counter(reference).most_common(1)[0][0]
    return label, sum(1 for y in labels if y == label) / len(labels)


def check_beats_majority(stage: str, accuracy: float, labels: Sequence[int], train_labels: Sequence[int]) -> None:
    """Refuse a stage whose validation accuracy is no better than always answering the majority label.

    "No better" allows one binomial standard error of the validation set above the majority share, so a
    model that learned nothing does not pass on luck; a real classifier is far above it.
    """
    label, share = majority_share(labels, train_labels)
    margin = math.sqrt(max(share * (1 - share), 1e-12) / len(labels))
    if accuracy <= share + margin:
        raise PrunexError(
            f"the {stage} stage ends at validation accuracy {accuracy:.4f}, no better than always answering the "
            f"majority label {label} ({share:.4f} of the {len(labels)} validation examples, +{margin:.4f} for "
            "chance): the classifier did not learn the task and no checkpoint was written. Check that the "
            "labels match the texts; otherwise train longer (--epochs, --steps) or change the learning rate "
            "(--model-lr)."
        )
