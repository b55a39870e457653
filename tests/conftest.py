"""Shared fixtures: the tiny random models, a DCP policy that really drops tokens, an isolated cache, a small
labelled task."""

from __future__ import annotations

import os

import pytest
import torch

from prunex.config import DCPConfig
from prunex.export.decoder import export_decoder
from prunex.models.encoders import load_classifier
from prunex.models.sources import LoadedModel, load_model
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM
from prunex.prune.ltp import LTPClassifier, LTPConfig, LTPThresholds
from prunex.runtime.sampling import SamplingParams

torch.set_num_threads(1)  # the tests are tiny; do not fight other jobs for cores


@pytest.fixture(scope="session", autouse=True)
def prunex_cache(tmp_path_factory):
    """Point PRUNEX_CACHE at a per-session temp dir so tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("prunex-cache")
    old = os.environ.get("PRUNEX_CACHE")
    os.environ["PRUNEX_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PRUNEX_CACHE", None)
    else:
        os.environ["PRUNEX_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny-gpt2")


def dropping_policy(base: LoadedModel, sink_tokens: int = 1, seed: int = 0, recent_tokens: int = 0) -> DCPPolicy:
    """A DCP policy for `base` whose random heads make hard decisions that drop a good share of tokens."""
    torch.manual_seed(seed)
    config = base.model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    dcp = DCPConfig(init_bias=0.3, sink_tokens=sink_tokens, recent_tokens=recent_tokens)
    policy = DCPPolicy(config.num_hidden_layers, hidden, dcp)
    with torch.no_grad():
        for proj in [*policy.q_int, *policy.k_int]:
            proj.weight.mul_(3)
    return policy.eval()


def assert_stepwise_equals_full(lm, prompts: list[list[int]], new_tokens: int):
    """Greedy step-wise generation (tokens physically leave the cache) of `new_tokens` per prompt has the logits
    and tokens of the full-sequence forward over prompt + generated tokens; returns the generation."""
    result = lm.generate(prompts, new_tokens, return_logits=True)
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt + result.token_ids[row]])
        with torch.no_grad():
            full = lm.forward(ids).logits[0, len(prompt) - 1: len(prompt) + new_tokens - 1]
        torch.testing.assert_close(full, result.step_logits[row], atol=1e-4, rtol=0)
        assert full.argmax(-1).tolist() == result.token_ids[row]
    return result


TEXTS = ["Once upon a time, in a land far away, there lived a", "The cat sat", "Pruning the cache: ", "Hello"]
GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A tiny Llama with a DCP policy that drops many entries, exported: (its PrunedLM, the exported dir)."""
    base = load_model("tiny-llama")
    lm = PrunedLM(base, dropping_policy(base))
    out = tmp_path_factory.mktemp("runtime") / "tiny-llama"
    export_decoder(lm, out, source="tiny-llama")
    return lm, out


def peaky_classifier(importance: str = "absolute") -> tuple[LTPClassifier, object]:
    """tiny-bert with sharp attention (q, k x20) so the thresholds keep only some tokens per row."""
    base = load_classifier("tiny-bert", 3)
    with torch.no_grad():
        for layer in base.model.base_model.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
            layer.attention.self.key.weight.mul_(20)
    final = 0.05 if importance == "absolute" else 1.0  # an average token of ~20 in absolute terms; 1 in relative
    thresholds = LTPThresholds(3, LTPConfig(final_threshold=final, temperature=final / 10, importance=importance))
    return LTPClassifier(base.model, thresholds, tokenizer=base.tokenizer).eval(), base


@pytest.fixture
def make_dropping_policy():
    """The `dropping_policy` builder as a fixture (tests call it with a base model)."""
    return dropping_policy


def write_labelled_csv(path, rows) -> None:
    """A labelled task file with a `text,label` header and one (text, label) pair per row."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="session")
def csv_task(tmp_path_factory):
    """A small labelled CSV for LTP: 'good' words = pos, 'bad' words = neg, rows of 3-15 words."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(100):
        label = rng.choice(["pos", "neg"])
        words = ["good", "great", "fine"] if label == "pos" else ["bad", "awful", "poor"]
        rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + f" no {i}", label))
    path = tmp_path_factory.mktemp("labelled") / "reviews.csv"
    write_labelled_csv(path, rows)
    return path


@pytest.fixture
def run_prunex(monkeypatch, capsys):
    """Run the console entry point in-process: `run_prunex(*args)` -> (exit code, stderr)."""
    import sys

    from prunex.cli.main import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["prunex", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    return run


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A small UTF-8 text file to train and evaluate on."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("Pruning keeps the tokens that matter and forgets the rest. " * 40, encoding="utf-8")
    return path


def run_ok(*args: str) -> str:
    """Run `prunex ARGS` in-process; assert it succeeded and return its stdout."""
    from typer.testing import CliRunner

    from prunex.cli.main import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout
