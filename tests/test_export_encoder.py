"""Encoder (LTP) ONNX export: ThresholdGather between layers, PyTorch logits to 1e-4, same kept tokens."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import peaky_classifier
from typer.testing import CliRunner

from prunex.checkpoints.ltp import save_ltp
from prunex.cli.main import app
from prunex.errors import PrunexError
from prunex.export.encoder import export_encoder
from prunex.format import read_encoder_manifest, read_manifest
from prunex.prune.ltp import LTPConfig, LTPThresholds

TEXTS = ("a long enough sentence for the pruner to drop a few of its many tokens", "short one", "mid length text here")


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("importance", ["absolute", "relative"])
def test_ltp_export_gathers_tokens_between_layers(tmp_path, importance):
    classifier, base = peaky_classifier(importance)
    manifest = export_encoder(classifier, tmp_path / "ltp", texts=TEXTS, base_model=base.model_id)
    assert manifest == read_encoder_manifest(tmp_path / "ltp")
    model = onnx.load(str(tmp_path / "ltp" / "model.onnx"))
    assert [n.op_type for n in model.graph.node if n.domain == "prunex"] == ["ThresholdGather"] * 3
    # independent run on new inputs: logits to 1e-4, kept tokens per layer and positions equal
    batch = classifier.tokenizer(["some other words to classify now", "x y"], padding=True, return_tensors="pt")
    logits, kept, positions = _session(tmp_path / "ltp" / "model.onnx").run(
        None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    )
    reference = classifier(batch["input_ids"], batch["attention_mask"], mode="hard")
    assert np.abs(logits - reference.logits.detach().numpy()).max() <= 1e-4
    assert np.array_equal(kept, reference.kept.numpy())
    assert np.array_equal(positions, reference.positions.numpy())
    assert kept[0, -1] < int(batch["attention_mask"][0].sum())  # tokens of the long row really left the graph
    assert manifest.validation["max_logit_diff"] <= 1e-4


def test_dense_encoder_export_keeps_every_token(tmp_path):
    classifier, _ = peaky_classifier()
    manifest = export_encoder(classifier, tmp_path / "dense", dense=True, texts=TEXTS)
    assert manifest.method == "dense"
    lengths = manifest.validation["lengths"]
    assert manifest.validation["kept_per_layer"] == [[n] * 3 for n in lengths]
    with pytest.raises(PrunexError, match="encoder"):
        read_manifest(tmp_path / "dense")  # the decoder runtime refuses an encoder export


def test_cli_exports_an_ltp_checkpoint(tmp_path):
    classifier, base = peaky_classifier()
    training = {"stage": "hard", "task": "test", "label_names": ["a", "b", "c"], "split_seed": 0, "max_length": 64}
    save_ltp(tmp_path / "ck", classifier, base, training, None)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "ck"), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    manifest = read_encoder_manifest(tmp_path / "onnx")
    assert manifest.method == "ltp" and manifest.label_names == ["a", "b", "c"]
    assert manifest.base_model_hash == base.weights_hash


def test_ltp_export_keeps_the_floor_of_tokens(tmp_path):
    """With thresholds above any importance, the graph keeps exactly [CLS] + the floor's most important tokens,
    as PyTorch does (min_tokens 3: rows of 3 or more tokens keep 3 after every layer)."""
    classifier, base = peaky_classifier()
    classifier.thresholds = LTPThresholds(3, LTPConfig(final_threshold=10.0, temperature=0.5, min_tokens=3))
    export_encoder(classifier, tmp_path / "floor", texts=TEXTS, base_model=base.model_id)
    batch = classifier.tokenizer(["some other words to classify now", "x"], padding=True, return_tensors="pt")
    logits, kept, _ = _session(tmp_path / "floor" / "model.onnx").run(
        None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    )
    reference = classifier(batch["input_ids"], batch["attention_mask"], mode="hard")
    lengths = batch["attention_mask"].sum(-1).numpy()
    assert np.array_equal(kept, np.minimum(lengths, 3)[:, None].repeat(3, axis=1))
    assert np.array_equal(kept, reference.kept.numpy())
    assert np.abs(logits - reference.logits.detach().numpy()).max() <= 1e-4
