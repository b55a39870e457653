"""The shipped default on the real model: SmolLM2-135M with its DCP heads, on held-out Wikipedia text.

These load the packaged SmolLM2 (converted once into the test cache, ~20 s) and run a few forwards of
1024 tokens: the slowest tests of the suite, and the only ones on a real model and real text.
"""

from __future__ import annotations

import pytest
import torch

from prunex.checkpoints.meta import load_checkpoint
from prunex.data.text import split_text, token_windows
from prunex.eval.perplexity import evaluate_perplexity
from prunex.loading import DEFAULT_CHECKPOINT, load_lm
from prunex.prune.window import WindowPolicy


@pytest.fixture(scope="module")
def default_lm():
    torch.set_num_threads(2)
    yield load_lm()
    torch.set_num_threads(1)


def test_default_checkpoint_is_small_and_tied_to_smollm2(default_lm):
    meta, tensors = load_checkpoint(DEFAULT_CHECKPOINT)
    assert meta.method == "dcp" and meta.base_model == "smollm2"
    assert meta.base_model_hash == default_lm.base.weights_hash
    assert (DEFAULT_CHECKPOINT / "pruning.safetensors").stat().st_size < 5 * 2**20  # a few MB at most
    assert len(default_lm.policy.q_int) == 30


def test_default_prunes_most_of_the_kv_at_small_perplexity_cost(default_lm):
    """16 held-out Wikipedia windows of 1024 tokens (docs/decoders.md's figures): over 75% of the KV pruned,
    perplexity within 5% of dense (the quality bar), and lower than the sinks + window baseline at the same
    sparsity."""
    windows = token_windows(default_lm.tokenizer, split_text("wikipedia", "test"), 1024, 16)
    report = evaluate_perplexity(default_lm, windows, show_progress=False)
    assert report.sparsity > 0.75
    assert report.ppl_ratio < 1.05
    policy = default_lm.policy
    try:
        default_lm.policy = WindowPolicy(window=124, sink_tokens=4)  # kept ~0.23, as ours
        baseline = evaluate_perplexity(default_lm, windows, show_progress=False)
    finally:
        default_lm.policy = policy
    assert abs(baseline.sparsity - report.sparsity) < 0.01
    assert report.perplexity < baseline.perplexity


def test_default_generates_paris_with_a_pruned_cache(default_lm):
    ids = default_lm.tokenizer("The capital of France is")["input_ids"]
    result = default_lm.generate([ids], max_new_tokens=3)
    assert default_lm.tokenizer.decode(result.token_ids[0]).strip().startswith("Paris")
