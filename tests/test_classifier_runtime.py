"""The classifier runtime: length-bucketed batches give the same labels and probabilities as one text at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import peaky_classifier

from prunex.errors import PrunexError
from prunex.export.encoder import export_encoder
from prunex.runtime.classifier import Classifier, length_batches

TEXTS = ["a long enough sentence for the pruner to drop a few of its many tokens", "short one",
         "mid length text here", "x", "another fairly long sentence with quite a lot of words in it, to batch"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    classifier, base = peaky_classifier()
    out = tmp_path_factory.mktemp("classifier") / "ltp"
    export_encoder(classifier, out, base_model=base.model_id)
    return classifier, out


def test_batches_respect_the_token_budget():
    lengths = [10, 3, 7, 10, 2, 30]
    batches = length_batches(lengths, max_tokens=20, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(lengths[b[0]] * len(b) <= 20 or len(b) == 1 for b in batches)
    assert batches[0] == [5]  # the longest text, alone


def test_classifier_matches_pytorch_in_any_batching(exported):
    classifier, out = exported
    runtime = Classifier(out, device="cpu", threads=1, max_tokens_per_batch=40)
    got = runtime.classify(TEXTS)
    one_by_one = [runtime.classify([t])[0] for t in TEXTS]
    assert [p.label for p in got] == [p.label for p in one_by_one]
    assert np.allclose([p.probabilities for p in got], [p.probabilities for p in one_by_one], atol=1e-5)
    batch = classifier.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = classifier(batch["input_ids"], batch["attention_mask"], mode="hard")
    probs = reference.logits.softmax(-1).numpy()
    assert np.allclose([p.probabilities for p in got], probs, atol=1e-4)
    assert [p.tokens_kept for p in got] == reference.kept[:, -1].tolist()
    assert got[0].tokens_kept < got[0].tokens  # LTP removed tokens of the long text
    assert sum(got[0].probabilities) == pytest.approx(1.0, abs=1e-5)


def test_classifier_errors(exported, tmp_path):
    with pytest.raises(PrunexError, match="at least one text"):
        Classifier(exported[1], device="cpu").classify([])
    with pytest.raises(PrunexError, match="not found"):
        Classifier(tmp_path, device="cpu")
