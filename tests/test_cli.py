"""The `prunex` command line: JSON outputs of generate / eval ppl / train, and clean user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_ok
from typer.testing import CliRunner

from prunex.cli.main import app
from prunex.errors import PrunexError

runner = CliRunner()


def test_entry_point_turns_user_error_into_one_line():
    """`prunex eval ppl /nonexistent/dir` in a real process: exit code 2, an 'error:' line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", "from prunex.cli.main import main; main()", "eval", "ppl", "/nonexistent/dir"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "/nonexistent/dir" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_train_refuses_non_empty_out_without_force(run_prunex, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    code, err = run_prunex("train", "dcp", "--model", "tiny-llama", "--out", str(tmp_path))
    assert code == 2 and "--force" in err and "Traceback" not in err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_train_refuses_unknown_method(run_prunex, tmp_path):
    code, err = run_prunex("train", "nope", "--out", str(tmp_path / "x"))
    assert code == 2 and "No such command 'nope'" in err and "dcp" in err and "ltp" in err
    assert not (tmp_path / "x").exists()


def test_eval_missing_text_file(tmp_path):
    """Through CliRunner the PrunexError surfaces as the result's exception."""
    result = runner.invoke(app, ["eval", "ppl", "tiny-llama", "--text-file", str(tmp_path / "none.txt")])
    assert isinstance(result.exception, PrunexError) and "does not exist" in str(result.exception)


def test_generate_dense_json():
    """A dense model keeps every K/V entry: kv_kept_fraction 1 and kv_bytes == dense_kv_bytes."""
    out = json.loads(run_ok("generate", "tiny-llama", "--prompt", "hello", "--max-new-tokens", "5", "--json"))
    assert out["prompt"] == "hello"
    assert 1 <= len(out["token_ids"]) <= 5 and all(0 <= t < 257 for t in out["token_ids"])
    assert isinstance(out["text"], str)
    assert out["kv_kept_fraction"] == 1.0
    assert out["kv_bytes"] == out["dense_kv_bytes"] > 0


def test_eval_ppl_dense_json(text_file):
    out = json.loads(run_ok("eval", "ppl", "tiny-llama", "--text-file", str(text_file), "--context", "32",
                            "--windows", "2", "--json"))
    assert out["tokens"] == 2 * 31 and out["windows"] == 2 and out["context"] == 32
    assert out["sparsity"] == 0.0
    assert out["perplexity"] == pytest.approx(out["dense_perplexity"], rel=1e-6)
    assert 100 < out["perplexity"] < 1000  # a random model over 257 symbols is near-uniform


def test_eval_ppl_window_baseline_json(text_file):
    """--window 8 --sinks 2 over 32-token windows prunes the closed-form share of causal pairs."""
    out = json.loads(run_ok("eval", "ppl", "tiny-llama", "--window", "8", "--sinks", "2", "--text-file",
                            str(text_file), "--context", "32", "--windows", "2", "--json"))
    kept = sum(1 for n in range(32) for j in range(n + 1) if j < 2 or n - j < 6)
    assert out["sparsity"] == pytest.approx(1 - kept / (32 * 33 / 2), rel=1e-6)
    assert out["sparsity"] > 0.5
    assert out["perplexity"] != out["dense_perplexity"]


def test_train_then_generate(tmp_path, text_file):
    """`train` writes a checkpoint that `generate DIR` loads."""
    out = tmp_path / "ckpt"
    stdout = run_ok("train", "dcp", "--model", "tiny-llama", "--text", str(text_file), "--steps", "2",
                    "--context", "32", "--threads", "1", "--out", str(out))
    assert f"wrote {out}" in stdout
    assert (out / "pruning.json").is_file() and (out / "pruning.safetensors").is_file()
    result = json.loads(run_ok("generate", str(out), "--prompt", "hi", "--max-new-tokens", "4", "--json"))
    assert 1 <= len(result["token_ids"]) <= 4
    # Two steps from a keep-logit bias of 5 drop nothing yet: the pruned cache holds every token.
    assert result["kv_kept_fraction"] == 1.0 and result["kv_bytes"] == result["dense_kv_bytes"] > 0


def test_generate_batch_json():
    """Repeating --prompt gives one JSON row per prompt."""
    out = json.loads(run_ok("generate", "tiny-gpt2", "--prompt", "ab", "--prompt", "xyz", "--max-new-tokens", "3",
                            "--json"))
    assert [row["prompt"] for row in out["rows"]] == ["ab", "xyz"]
    assert "text" not in out and out["kv_kept_fraction"] == 1.0


def test_train_out_is_a_file(run_prunex, tmp_path):
    """--out naming an existing file is a user error (exit 2), not a traceback."""
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, err = run_prunex("train", "dcp", "--model", "tiny-llama", "--out", str(target))
    assert code == 2 and err.startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")
def test_train_on_cuda_without_a_gpu_says_what_to_do(run_prunex, tmp_path):
    code, err = run_prunex("train", "dcp", "--model", "tiny-llama", "--device", "cuda", "--steps", "1",
                         "--out", str(tmp_path / "x"))
    assert code == 2 and "--device cpu" in err and "Traceback" not in err


def test_unknown_device_is_refused(run_prunex, text_file):
    code, err = run_prunex("eval", "ppl", "tiny-gpt2", "--text-file", str(text_file),
                         "--device", "tpu")
    assert code == 2 and "auto, cpu, cuda" in err


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "The capital of France is", "--max-new-tokens", "2", "--json"],
    ["eval", "ppl", "smollm2", "--context", "32", "--windows", "1", "--json"],
], ids=["generate-built-in", "eval-ppl-smollm2"])
def test_json_commands_print_one_json_document_on_a_cold_cache(tmp_path, command):
    """The first run converts the packaged SmolLM2 (and extracts the texts): that is said on stderr, never stdout."""
    env = {**os.environ, "PRUNEX_CACHE": str(tmp_path / "cold-cache")}
    result = subprocess.run([sys.executable, "-c", "from prunex.cli.main import main; main()", *command],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert "converting the packaged SmolLM2" in result.stderr
