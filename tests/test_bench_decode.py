"""`prunex bench decode` end to end on a tiny exported model: the report has every engine's figures."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import dropping_policy
from onnx import numpy_helper
from typer.testing import CliRunner

from prunex.bench.decode import step_weight_bytes
from prunex.cli.main import app
from prunex.export.decoder import export_decoder
from prunex.prune.lm import PrunedLM


def test_bench_decode_reports_prunex_dense_and_torch(tiny_llama, tmp_path):
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama))
    export_decoder(lm, tmp_path / "pruned", source="tiny-llama")
    export_decoder(lm, tmp_path / "dense", dense=True, source="tiny-llama")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "decode", str(tmp_path / "pruned"), "--baseline", str(tmp_path / "dense"), "--batch", "2",
        "--context", "32", "--new-tokens", "4", "--threads", "1", "--repeats", "2", "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    assert (row["batch"], row["context"]) == (2, 32)
    for key in ("prunex_tokens_per_s", "baseline_tokens_per_s", "torch_tokens_per_s", "prunex_kv_bytes",
                "baseline_kv_bytes", "prunex_peak_rss_bytes", "prunex_time_to_first_token_s", "speedup_vs_baseline"):
        assert row[key] > 0, key
    assert row["prunex"]["kv_held_bytes"] < row["baseline"]["kv_held_bytes"]  # entries really left the cache
    assert row["prunex"]["first_tokens"] and row["baseline"]["kv_kept_fraction"] == 1.0
    assert out.with_suffix(".png").is_file()
    # two rounds: every engine ran twice; the ratio is the median of the rounds' own ratios
    assert len(row["prunex_tokens_per_s_runs"]) == len(row["torch_tokens_per_s_runs"]) == 2
    rounds = [p / b for p, b in zip(row["prunex_tokens_per_s_runs"], row["baseline_tokens_per_s_runs"])]
    assert row["speedup_vs_baseline_runs"] == rounds
    assert abs(row["speedup_vs_baseline"] - sum(rounds) / 2) < 1e-9
    assert row["prunex_tokens_per_s"] in row["prunex_tokens_per_s_runs"]
    assert row["prunex_floor_ratio"] == row["prunex_floor_tokens_per_s"] / row["prunex_tokens_per_s"]


def test_the_floor_reads_every_weight_but_the_embedding_table(tiny_llama, tmp_path):
    """A decode step reads every weight once except the token embedding, of which it gathers B rows."""
    export_decoder(PrunedLM(tiny_llama, dropping_policy(tiny_llama)), tmp_path / "pruned", source="tiny-llama")
    initializers = onnx.load(str(tmp_path / "pruned" / "model.onnx")).graph.initializer
    sizes = {tensor.name: numpy_helper.to_array(tensor).nbytes for tensor in initializers}
    assert step_weight_bytes(tmp_path / "pruned") == sum(sizes.values()) - sizes["embed"]


def test_bench_decode_runs_the_onnxruntime_genai_peer_on_the_same_prompts(tiny_llama, tmp_path):
    """`--peer ortgenai`: onnxruntime-genai's builder makes its own fused dense graph of the same base model; its
    greedy tokens equal the dense export's, and its figures sit in the report under its name."""
    lm = PrunedLM(tiny_llama, None)
    export_decoder(lm, tmp_path / "dense", dense=True, source="tiny-llama")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "decode", str(tmp_path / "dense"), "--baseline", str(tmp_path / "dense"), "--batch", "2",
        "--context", "32", "--new-tokens", "6", "--threads", "1", "--no-torch", "--peer", "ortgenai",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    assert row["ortgenai_tokens_per_s"] > 0 and row["ortgenai_time_to_first_token_s"] > 0
    assert row["ortgenai"]["precision"] == "fp32" and row["speedup_vs_ortgenai"] > 0
    assert row["ortgenai"]["first_tokens"] == row["prunex"]["first_tokens"]


FAKE_PEER = """
import json, sys
from pathlib import Path

args = dict(zip(sys.argv[2::2], sys.argv[3::2]))  # argv[1]: the worker's path
prompts = json.loads(Path(args["--prompts"]).read_text())
print("converting ...")  # a worker's chatter before its JSON line is ignored
print(json.dumps({"time_to_first_token_s": 0.5, "decode_tokens_per_s": 10.0 + int(args["--max-cache"]),
                  "first_tokens": [len(prompts), len(prompts[0])], "worker": Path(sys.argv[1]).name,
                  "weights": args["--weights"], "max_cache": int(args["--max-cache"])}))
"""


def test_bench_decode_runs_the_openvino_peer_from_its_own_environment(tiny_llama, tmp_path):
    """`--openvino-python PY`: the OpenVINO worker runs by path under that Python on the same prompts, once dense
    and once with its eviction held to the tokens prunex's row kept in the same round (a stand-in Python here:
    OpenVINO's environment pins transformers < 5.6)."""
    import sys

    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama))
    export_decoder(lm, tmp_path / "pruned", source="tiny-llama")
    (tmp_path / "fake_peer.py").write_text(FAKE_PEER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_peer.py"} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "decode", str(tmp_path / "pruned"), "--baseline", str(tmp_path / "pruned"), "--batch", "2",
        "--context", "32", "--new-tokens", "4", "--threads", "1", "--no-torch", "--openvino-python", str(python),
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    dense, evicting = row["openvino"], row["openvino_evict"]
    assert dense["worker"] == "openvino_peer.py" and dense["weights"] == "fp32" and dense["max_cache"] == 0
    assert dense["first_tokens"] == [2, 32]  # the bench's prompts: 2 rows of 32 tokens
    kept = round(row["prunex"]["kv_kept_fraction"] * (32 + 4))
    assert 0 < kept < 36 and evicting["max_cache"] == kept
    assert row["speedup_vs_openvino"] == row["prunex_tokens_per_s"] / 10.0
    assert row["openvino_evict_tokens_per_s"] == 10.0 + kept


@pytest.mark.parametrize("worker", ["openvino_peer.py", "optimum_peer.py"])
def test_the_workers_run_by_path_import_their_helpers(worker):
    """The workers run by path under another environment's Python: their folder is then on sys.path, so their
    own names must not shadow the packages they drive, and the helper they share must import."""
    import subprocess
    import sys
    from pathlib import Path

    import prunex.bench

    path = Path(prunex.bench.__file__).parent / "workers" / worker
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--prompts" in done.stdout


def test_bench_decode_refuses_an_unknown_peer(tmp_path):
    result = CliRunner().invoke(app, ["bench", "decode", str(tmp_path), "--peer", "vllm"])
    assert result.exit_code != 0 and "not available" in str(result.exception)


def test_the_llamacpp_peer_says_what_to_install_when_llama_cpp_is_missing(tiny_llama, tmp_path, monkeypatch):
    """llama-cpp-python compiles for ~10 min, so it is not a test dependency: without it the peer says what to
    install (the bench puts that line in the peer's row and goes on with the other engines)."""
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # unimportable, here and in nothing else
    from prunex.bench.workers.llamacpp import _llama_cpp
    from prunex.errors import PrunexError

    with pytest.raises(PrunexError, match="pip install llama-cpp-python"):
        _llama_cpp()


def test_bench_decode_with_an_attention_policy(tiny_llama, tmp_path):
    """`--policy h2o`: refused before anything runs on an export without attention scores; on one with them, the
    prunex engine holds at most its budget per row and layer while the baseline holds everything."""
    lm = PrunedLM(tiny_llama, None)
    export_decoder(lm, tmp_path / "dense", dense=True, source="tiny-llama")
    export_decoder(lm, tmp_path / "scored", dense=True, source="tiny-llama", attention_scores=True)
    common = ["--baseline", str(tmp_path / "dense"), "--batch", "2", "--context", "32", "--new-tokens", "4",
              "--threads", "1", "--no-torch", "--policy", "h2o", "--kv-tokens", "8"]
    refused = CliRunner().invoke(app, ["bench", "decode", str(tmp_path / "dense"), *common])
    assert refused.exit_code != 0 and "--attention-scores" in str(refused.exception)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "decode", str(tmp_path / "scored"), *common, "--out", str(out)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    tokens_seen = 32 + 4 - 2  # the figures are taken before the last step: the prompt and two fed tokens
    held_per_row_and_layer = row["prunex"]["kv_kept_fraction"] * tokens_seen
    assert held_per_row_and_layer == pytest.approx(8) and row["baseline"]["kv_kept_fraction"] == 1.0
