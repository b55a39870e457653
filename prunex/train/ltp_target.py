"""A relative-FLOPs target for LTP instead of a hand-picked lambda.

Two parts:
- `LambdaController` (soft stage): after each step, lambda is multiplied by exp(gain * (f - target)), f being
  a running mean of the batch's relative FLOPs under the hard decisions the soft mask stands for; so the model
  and thresholds train at about the pruning the user asked for, on snippets and on articles alike. The gain
  is low and lambda bounded, so that a lag of the thresholds does not wind lambda up; the calibration below
  makes the landing exact.
- `calibrate_thresholds` (end of the soft stage, and again after the hard stage if it drifted): every
  threshold is scaled by one factor, found by bisection in log space, until the relative FLOPs of hard
  pruning on validation examples are at most the target and within `tolerance` of it (`on_target`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from prunex.errors import PrunexError
from prunex.eval.accuracy import measure
from prunex.prune.ltp import LTPClassifier, LTPThresholds

log = logging.getLogger(__name__)

MIN_LAMBDA, MAX_LAMBDA = 1e-3, 1.0  # beyond 1 the mask loss drowns the task's loss (0.1 is the paper's middle)


class LambdaController:
    """Multiplicative lambda updates that steer the soft stage's relative FLOPs towards `target`."""

    def __init__(self, target: float, lam: float, gain: float = 0.5, smoothing: float = 0.8) -> None:
        self.target, self.lam, self.gain, self.smoothing = target, lam, gain, smoothing
        self.flops: float | None = None  # running mean of the batches' relative FLOPs

    def update(self, batch_relative_flops: float) -> float:
        """Record one batch's relative FLOPs; returns the lambda for the next step."""
        if self.flops is None:
            self.flops = batch_relative_flops
        else:
            self.flops = self.smoothing * self.flops + (1 - self.smoothing) * batch_relative_flops
        self.lam = min(MAX_LAMBDA, max(MIN_LAMBDA, self.lam * math.exp(self.gain * (self.flops - self.target))))
        return self.lam


@dataclass
class Calibration:
    """What the threshold search found."""

    target: float
    relative_flops: float  # on the calibration examples, after scaling
    scale: float  # factor applied to every threshold
    evaluations: int
    examples: int

    def to_dict(self) -> dict:
        return {"target": self.target, "relative_flops": round(self.relative_flops, 4),
                "scale": round(self.scale, 4), "evaluations": self.evaluations, "examples": self.examples}


def calibration_examples(encoded: Sequence[Sequence[int]], max_tokens: int) -> int:
    """How many of the first examples fit in `max_tokens` input tokens (at least 1): a cheap, fixed sample."""
    total = 0
    for count, row in enumerate(encoded, start=1):
        total += len(row)
        if total >= max_tokens:
            return count
    return len(encoded)


def _set_scale(classifier: LTPClassifier, base: LTPThresholds, scale: float) -> None:
    scaled = LTPThresholds(len(base.offset), base.config.scaled(scale)).to(base.offset.device)
    scaled.offset.data.copy_(base.offset.detach())
    classifier.thresholds = scaled


def on_target(flops: float, target: float, tolerance: float) -> bool:
    """True when `flops` is at most `target` and within `tolerance` of it: what the user asked, not more."""
    return target - tolerance <= flops <= target


def calibrate_thresholds(
    classifier: LTPClassifier,
    encoded: Sequence[Sequence[int]],
    labels: Sequence[int],
    target: float,
    *,
    tolerance: float = 0.01,
    max_evaluations: int = 14,
) -> Calibration:
    """Scale `classifier`'s thresholds so that hard pruning on `encoded` runs at `target` relative FLOPs or
    just under (`on_target`).

    Relative FLOPs fall as the thresholds rise (more tokens removed), so the factor is bracketed by doubling
    or halving, then bisected; the factor kept is the one with the most FLOPs not above the target (the floor
    of tokens can make a low target unreachable: then the lowest FLOPs reached are reported). Replaces
    `classifier.thresholds`.
    """
    if not 0 < target <= 1:
        raise PrunexError(f"the target relative FLOPs must be in (0, 1], got {target}")
    base = classifier.thresholds

    def flops_at(scale: float) -> float:
        _set_scale(classifier, base, scale)
        return measure(classifier, encoded, labels, mode="hard").relative_flops

    evaluations = 0
    tried: list[tuple[float, float]] = []  # (scale, relative FLOPs)
    low, high = None, None  # scales with FLOPs above / below the target
    scale = 1.0
    while evaluations < max_evaluations:
        flops = flops_at(scale)
        evaluations += 1
        tried.append((scale, flops))
        log.info("threshold scale %.4g: relative FLOPs %.4f (target %.3f)", scale, flops, target)
        if on_target(flops, target, tolerance):
            break
        if flops > target:
            low = scale
            scale = scale * 2 if high is None else math.sqrt(scale * high)
        else:
            high = scale
            scale = scale / 2 if low is None else math.sqrt(low * scale)
    under = [pair for pair in tried if pair[1] <= target]
    best_scale, best_flops = (max(under, key=lambda pair: pair[1]) if under
                              else min(tried, key=lambda pair: pair[1]))
    _set_scale(classifier, base, best_scale)
    return Calibration(target, best_flops, best_scale, evaluations, len(encoded))
