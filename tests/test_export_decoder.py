"""Decoder ONNX export: the fused graph (GroupQueryAttention over shared slot buffers), ORT greedy generation
equal to PyTorch (prefill in chunks too), clean errors."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from conftest import dropping_policy
from typer.testing import CliRunner

from prunex.cli.main import app
from prunex.config import FORMAT_VERSION
from prunex.errors import PrunexError
from prunex.export.decoder import export_decoder
from prunex.format import MANIFEST_FILE, read_manifest
from prunex.prune.lm import PrunedLM
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams

TEXTS = ["Once upon a time, in a land far away, there lived a", "The cat sat", "Pruning the cache: "]


def _prompts(lm: PrunedLM) -> list[list[int]]:
    return [lm.tokenizer(t)["input_ids"] for t in TEXTS]


def _onnx_greedy(out, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy token ids per prompt and the kv kept fraction, through the runtime on CPU."""
    runtime = Runtime(out, device="cpu", threads=1)
    done = runtime.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True))
    return [c.token_ids for c in done], runtime.last_stats["kv_kept_fraction"]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def exported(request, tmp_path_factory):
    """(PrunedLM with a dropping DCP policy, its exported dir, the manifest)."""
    base = request.getfixturevalue("tiny_llama" if request.param == "tiny-llama" else "tiny_gpt2")
    lm = PrunedLM(base, dropping_policy(base))
    out = tmp_path_factory.mktemp("export") / request.param
    manifest = export_decoder(lm, out, source=request.param)
    return lm, out, manifest


def test_graph_is_fused_and_plain_ort_loads_it(exported):
    lm, out, manifest = exported
    model = onnx.load(str(out / "model.onnx"))
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ops.count(("com.microsoft", "GroupQueryAttention")) == manifest.num_layers
    norm = "SkipSimplifiedLayerNormalization" if lm.adapter.graph_spec().norm == "rms" else "SkipLayerNormalization"
    assert ops.count(("com.microsoft", norm)) == 2 * manifest.num_layers  # the residual adds fused in
    assert ops.count(("", "If")) == manifest.num_layers  # decode steps skip the prefill-only decisions
    assert not model.functions and not any(domain == "prunex" for domain, _ in ops)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == manifest.output_names()
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["past_key.0"][2] == inputs["past_valid.0"][2] == "capacity.0"  # a capacity per layer
    assert inputs["past_kint.1"][2] == inputs["past_guard.1"][2] == "capacity.1"
    assert inputs["capacity.0"] == [] and "seqlens.0" in inputs


def test_manifest_records_the_export(exported):
    lm, out, manifest = exported
    again = read_manifest(out)
    assert again == manifest
    assert again.method == "dcp" and again.op_domain == "prunex" and again.op_domain_version == 1
    assert again.interaction_dim == lm.policy.state_dim and again.num_layers == lm.adapter.num_layers
    assert again.base_model_hash == lm.base.weights_hash
    assert again.past["key"] == "past_key.%d" and again.graph_version == 4
    assert (again.sink_tokens, again.recent_tokens) == (1, 0)
    assert 0 <= again.validation["max_logit_diff"] <= 1e-4
    assert (out / "tokenizer.json").is_file()


def test_greedy_generation_equals_pytorch_token_for_token(exported):
    lm, out, _ = exported
    prompts = _prompts(lm)
    assert len({len(p) for p in prompts}) == 3
    reference = lm.generate(prompts, max_new_tokens=12)
    token_ids, kept = _onnx_greedy(out, prompts, 12)
    assert token_ids == reference.token_ids
    assert kept == pytest.approx(reference.kv_kept_fraction, abs=1e-6)
    assert kept < 0.9  # the policy really dropped entries


def test_prefill_in_chunks_equals_pytorch(exported):
    """Prompts longer than a prefill chunk: each chunk attends only to what the earlier ones kept, and the
    result is the whole-prompt result (decisions are cumulative), token for token."""
    lm, out, _ = exported
    prompts = _prompts(lm)
    reference = lm.generate(prompts, max_new_tokens=8)
    runtime = Runtime(out, device="cpu", threads=1)
    runtime.engine.prefill_chunk = 3
    done = runtime.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert [c.token_ids for c in done] == reference.token_ids


def test_dense_export_matches_dense_model(tiny_llama, tmp_path):
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama))
    manifest = export_decoder(lm, tmp_path / "dense", dense=True)
    assert manifest.method == "dense" and manifest.interaction_dim == 0
    prompts = _prompts(lm)
    reference = PrunedLM(tiny_llama, None).generate(prompts, max_new_tokens=6)
    token_ids, kept = _onnx_greedy(tmp_path / "dense", prompts, 6)
    assert token_ids == reference.token_ids
    assert kept == 1.0


def test_refuses_non_empty_out_and_old_opset(tiny_llama, tmp_path):
    lm = PrunedLM(tiny_llama, None)
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(PrunexError, match="--force"):
        export_decoder(lm, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    with pytest.raises(PrunexError, match="opset 11"):
        export_decoder(lm, tmp_path / "new", opset=11)
    assert not (tmp_path / "new").exists()


def test_failed_validation_leaves_nothing_behind(tiny_llama, tmp_path):
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama))
    with pytest.raises(PrunexError, match="logits differ"):
        export_decoder(lm, tmp_path / "out", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_graph_of_an_older_layout_is_refused(exported, tmp_path):
    _, out, _ = exported
    data = json.loads((out / MANIFEST_FILE).read_text())
    for version in (None, 2):  # layout 1 (compacted present_* outputs), layout 2 (traced step, read-only past)
        if version is None:
            del data["graph_version"]
        else:
            data["graph_version"] = version
        (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
        with pytest.raises(PrunexError, match="export it again"):
            read_manifest(tmp_path)


def test_newer_manifest_is_refused(exported, tmp_path):
    _, out, _ = exported
    data = json.loads((out / MANIFEST_FILE).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(PrunexError, match="upgrade prunex"):
        read_manifest(tmp_path)


def test_cli_export_then_generate_runs_onnx(tmp_path):
    runner = CliRunner()
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "tiny-gpt2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "dense"
    args = ["--prompt", "hello there", "--prompt", "hi", "--max-new-tokens", "5", "--json"]
    via_onnx = runner.invoke(app, ["generate", str(out), *args])
    via_torch = runner.invoke(app, ["generate", "tiny-gpt2", *args])
    assert via_onnx.exit_code == 0 and via_torch.exit_code == 0, via_onnx.output + via_torch.output
    onnx_rows = [{k: row[k] for k in ("prompt", "text", "token_ids")} for row in json.loads(via_onnx.stdout)["rows"]]
    assert onnx_rows == json.loads(via_torch.stdout)["rows"]
    again = runner.invoke(app, ["export", "tiny-gpt2", "--out", str(out)])
    assert again.exit_code != 0 and isinstance(again.exception, PrunexError)


def test_cli_export_unknown_source(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, PrunexError)
    assert not (tmp_path / "o").exists()
