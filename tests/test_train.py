"""Training pieces: the alpha schedule and the distillation loss."""

from __future__ import annotations

import pytest
import torch

from prunex.config import TrainConfig
from prunex.train.dcp_trainer import alpha_at, distill_loss


def test_alpha_cosine_schedule_ends_at_both_bounds():
    config = TrainConfig(steps=11, alpha_start=1.0, alpha_end=8.0)
    values = [alpha_at(step, config) for step in range(11)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(8.0)
    assert values[5] == pytest.approx(4.5)  # cosine midpoint
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_distill_loss_is_zero_for_the_dense_logits_and_positive_otherwise():
    torch.manual_seed(0)
    dense = torch.randn(2, 5, 11)
    assert float(distill_loss(dense, dense)) == pytest.approx(0.0, abs=1e-6)
    other = dense + torch.randn(2, 5, 11)
    expected = torch.nn.functional.kl_div(other.log_softmax(-1), dense.log_softmax(-1), log_target=True,
                                          reduction="sum") / 10
    assert float(distill_loss(other, dense)) == pytest.approx(float(expected), rel=1e-5)
