"""Training pieces: the alpha schedule, the distillation loss and the progress a log file gets."""

from __future__ import annotations

import logging

import pytest
import torch

from prunex.config import DCPTrainConfig
from prunex.train.dcp_trainer import alpha_at, distill_loss
from prunex.train.progress import TrainProgress


def test_alpha_cosine_schedule_ends_at_both_bounds():
    config = DCPTrainConfig(steps=11, alpha_start=1.0, alpha_end=8.0)
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


def test_progress_is_logged_as_lines_when_stderr_is_not_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="prunex.train.progress"):
        with TrainProgress(3, log_every_s=3600) as progress:  # pytest captures stderr: not a terminal
            for step in range(3):
                progress.update({"loss": 1.0 / (step + 1)})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("train step 3/3") and "loss 0.333" in lines[0]
