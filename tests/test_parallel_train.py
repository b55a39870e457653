"""Data-parallel training on two CPU processes (torchrun, gloo, accelerate): the checkpoint equals what one
process writes for the same global batch and seed, and a two-process run killed mid-way resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from prunex.checkpoints.ltp import MODEL_FILE, read_ltp_meta
from prunex.checkpoints.meta import WEIGHTS_FILE, load_checkpoint
from prunex.train.resume import STATE_FILE

# Gradients summed in another order across processes differ by float rounding; Adam's normalised steps carry
# that into the weights, which the checkpoint stores in fp16: a few fp16 steps at most (measured: <= 8e-4).
TOLERANCE = 2e-3


def _train(out, *options: str, processes: int = 1, wait: bool = True) -> subprocess.Popen | None:
    """`prunex train METHOD ...` (`options` start with the method) on one process, or data-parallel on
    `processes` (torchrun on CPU)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "prunex", "train", *options, "--out", str(out), "--device", "cpu", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return None


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        # an attention key bias has a gradient of 0 in exact arithmetic (softmax ignores it): Adam makes its
        # rounding noise into steps of up to the learning rate (measured: 3.9e-3 after 36 steps at 1e-2)
        atol = 2e-2 if name.endswith("attention.self.key.bias") else TOLERANCE
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("parallel") / "corpus.txt"
    path.write_text("The river runs to the sea, and the sea answers the moon. " * 200, encoding="utf-8")
    return path


DCP = ("dcp", "--model", "tiny-llama", "--steps", "6", "--batch-size", "4", "--context", "32",
       "--init-bias", "0", "--lr", "0.02", "--interaction-dim", "8")


def test_dcp_on_two_processes_writes_the_one_process_checkpoint(tmp_path, corpus):
    _train(tmp_path / "one", *DCP, "--text", str(corpus))
    _train(tmp_path / "two", *DCP, "--text", str(corpus), processes=2)
    (one_meta, one), (two_meta, two) = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    _same_tensors(one, two)
    first, second = one_meta.training["last_steps"], two_meta.training["last_steps"]
    assert [s["step"] for s in first] == [s["step"] for s in second]
    for a, b in zip(first, second):  # the whole batch's figures, averaged over the processes
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["sparsity"] == pytest.approx(a["sparsity"], rel=1e-4)
    assert two_meta.training["figures"]["processes"] == 2 and one_meta.training["figures"]["processes"] == 1
    assert first[-1]["sparsity"] > 0.05  # the heads really learned to drop entries


def test_a_killed_two_process_run_resumes(tmp_path, corpus):
    options = (*DCP[:3], "--steps", "20", *DCP[5:], "--text", str(corpus))
    _train(tmp_path / "whole", *options)
    run = _train(tmp_path / "cut", *options, "--save-every", "0", processes=2, wait=False)
    state = tmp_path / "cut" / STATE_FILE
    deadline = time.monotonic() + 300
    while not state.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for process in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        process.send_signal(signal.SIGKILL)  # the machine went away: no chance to save anything more
    run.wait()
    assert state.is_file(), "the run ended before its state was saved"
    step = torch.load(state, weights_only=False)["step"]
    assert 0 < step < 20
    _train(tmp_path / "cut", *options, "--resume", processes=2)
    _same_tensors(load_file(tmp_path / "cut" / WEIGHTS_FILE), load_file(tmp_path / "whole" / WEIGHTS_FILE))
    assert not state.exists()


def test_ltp_on_two_processes_writes_the_one_process_checkpoint(tmp_path, csv_task):
    # dropout draws masks per process: a model without it is what makes the two runs comparable
    from prunex.models.encoders import load_classifier

    base = load_classifier("tiny-bert", 2)
    base.model.config.hidden_dropout_prob = base.model.config.attention_probs_dropout_prob = 0.0
    base.model.config.classifier_dropout = 0.0
    base.model.save_pretrained(tmp_path / "tiny-bert")
    base.tokenizer.save_pretrained(tmp_path / "tiny-bert")
    options = ("ltp", "--model", str(tmp_path / "tiny-bert"), "--task", str(csv_task), "--steps", "12",
               "--batch-size", "8", "--model-lr", "0.01")
    _train(tmp_path / "one", *options)
    _train(tmp_path / "two", *options, processes=2)
    for name in (MODEL_FILE, WEIGHTS_FILE):
        _same_tensors(load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name))
    one, two = (read_ltp_meta(tmp_path / run).training["figures"] for run in ("one", "two"))
    for stage in ("base", "soft", "hard"):  # the soft stage's mask loss is the whole batch's token mean
        assert two[stage]["thresholds"] == pytest.approx(one[stage]["thresholds"], abs=1e-5)
        assert two[stage]["validation"]["accuracy"] == one[stage]["validation"]["accuracy"]
        assert two[stage]["loss"] == pytest.approx(one[stage]["loss"], abs=1e-3)
