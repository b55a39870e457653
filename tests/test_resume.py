"""Training that survives an interruption: a run stopped mid-stage and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prunex.checkpoints.ltp import MODEL_FILE
from prunex.checkpoints.meta import WEIGHTS_FILE
from prunex.config import DCPConfig, DCPTrainConfig
from prunex.errors import PrunexError
from prunex.train import dcp_trainer
from prunex.train.ltp_trainer import LTPTrainConfig, train_ltp
from prunex.train.resume import STATE_FILE, TrainState


class Interrupted(Exception):
    """Stands for the end of a session."""


@pytest.fixture
def save_every_step(monkeypatch):
    """Save the state after every step; returns a function that makes the save at `where` the last one."""
    monkeypatch.setattr(TrainState, "due", lambda self: True)
    original = TrainState.save
    stops: set[str] = set()

    def save(self, state, where):
        original(self, state, where)
        if where in stops:
            stops.discard(where)
            raise Interrupted(where)

    monkeypatch.setattr(TrainState, "save", save)
    return stops.add


def _same_tensors(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_ltp_run_interrupted_twice_ends_as_an_uninterrupted_one(tmp_path, csv_task, save_every_step):
    """Stopped mid-base (after a validation check) and mid-soft, resumed each time: same weights, thresholds
    and early-stopping checks as a run that never stopped; the state file is gone once the checkpoint is."""
    config = LTPTrainConfig(model="tiny-bert", task=str(csv_task), base_epochs=1.0, check_epochs=0.3,
                            prune_epochs=0.4, min_steps=4, patience=5, batch_size=8, lr=1e-2, threads=1)
    whole = train_ltp(config, tmp_path / "whole", show_progress=False)
    assert not (tmp_path / "whole" / STATE_FILE).exists()

    save_every_step("base stage step 5")
    with pytest.raises(Interrupted):
        train_ltp(config, tmp_path / "cut", show_progress=False)
    save_every_step("soft stage step 2")
    with pytest.raises(Interrupted):
        train_ltp(config, tmp_path / "cut", show_progress=False, resume=True)
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=False)["stage"] == "soft"
    resumed = train_ltp(config, tmp_path / "cut", show_progress=False, resume=True)

    assert not (tmp_path / "cut" / STATE_FILE).exists()
    checks = whole.training["figures"]["base"]["checks"]
    assert len(checks) >= 3 and resumed.training["figures"]["base"]["checks"] == checks
    for stage in ("base", "soft", "hard"):
        assert resumed.training["figures"][stage]["steps"] == whole.training["figures"][stage]["steps"]
        assert resumed.training["figures"][stage]["validation"] == whole.training["figures"][stage]["validation"]
    assert resumed.config == whole.config
    for name in (MODEL_FILE, WEIGHTS_FILE):
        _same_tensors(load_file(tmp_path / "cut" / name), load_file(tmp_path / "whole" / name))


def test_resume_with_other_settings_is_refused(tmp_path, csv_task, save_every_step):
    config = LTPTrainConfig(model="tiny-bert", task=str(csv_task), stage="base", steps=4, batch_size=8, threads=1)
    save_every_step("base stage step 2")
    with pytest.raises(Interrupted):
        train_ltp(config, tmp_path / "cut", show_progress=False)
    other = LTPTrainConfig(**{**vars(config), "lr": 1e-3, "threads": 2})  # threads may change, lr not
    with pytest.raises(PrunexError, match="lr differ"):
        train_ltp(other, tmp_path / "cut", show_progress=False, resume=True)


def test_dcp_run_interrupted_ends_as_an_uninterrupted_one(tmp_path, save_every_step):
    text = tmp_path / "corpus.txt"
    text.write_text("The river runs to the sea, and the sea answers the moon. " * 60, encoding="utf-8")
    config = DCPTrainConfig(model="tiny-llama", text=str(text), steps=5, context=32, threads=1)
    dcp = DCPConfig(interaction_dim=8)
    whole = dcp_trainer.train_dcp(config, dcp, tmp_path / "whole", show_progress=False)
    save_every_step("step 3")
    with pytest.raises(Interrupted):
        dcp_trainer.train_dcp(config, dcp, tmp_path / "cut", show_progress=False)
    resumed = dcp_trainer.train_dcp(config, dcp, tmp_path / "cut", show_progress=False, resume=True)
    assert resumed.training["last_steps"] == whole.training["last_steps"]
    assert resumed.training["figures"]["validation"] == whole.training["figures"]["validation"]
    _same_tensors(load_file(tmp_path / "cut" / WEIGHTS_FILE), load_file(tmp_path / "whole" / WEIGHTS_FILE))
    assert not (tmp_path / "cut" / STATE_FILE).exists()


def test_cli_resume_refuses_a_folder_without_state_and_resume_with_force(run_prunex, tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "pruning.json").write_text("{}")
    code, err = run_prunex("train", "ltp", "--out", str(finished), "--resume")
    assert code == 2 and "no saved training state" in err
    code, err = run_prunex("train", "dcp", "--out", str(finished), "--resume", "--force")
    assert code == 2 and "pass one of them" in err
    assert (finished / "pruning.json").exists()  # nothing lost
