"""DCP and the window baseline: cumulative decisions, exactness when nothing is dropped, sinks, and the
equality of full-sequence (masked) logits with step-wise generation that physically drops K/V entries."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_stepwise_equals_full, dropping_policy

from prunex.config import DCPConfig
from prunex.errors import PrunexError
from prunex.prune.dcp import DCPPolicy
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM
from prunex.prune.policy import cumulative_keep
from prunex.prune.pruned_cache import PrunedKVCache
from prunex.prune.window import WindowPolicy


def _hidden(base) -> int:
    return getattr(base.model.config, "hidden_size", None) or base.model.config.n_embd


def test_cumulative_keep_is_product_of_later_decisions():
    """keep[n, j] = prod_{m=j+1..n} step[m, j]; 1 on and above the diagonal; non-increasing in n."""
    torch.manual_seed(0)
    T = 7
    step = torch.rand(2, T, T, dtype=torch.float64) * 0.5 + 0.5
    keep = cumulative_keep(step)
    for b in range(2):
        for n in range(T):
            for j in range(T):
                expected = math.prod(step[b, m, j].item() for m in range(j + 1, n + 1))
                assert keep[b, n, j].item() == pytest.approx(expected, rel=1e-9)
    assert torch.all(keep.diagonal(dim1=-2, dim2=-1) == 1)
    assert torch.all(keep[:, 1:] <= keep[:, :-1] + 1e-12)  # a later query keeps no more than an earlier one


def test_cumulative_keep_hard_and_causal():
    """Hard decisions: once a key is dropped it stays dropped; a later query's decisions do not change
    the keep rows of earlier queries."""
    torch.manual_seed(1)
    T = 10
    step = (torch.rand(1, T, T) > 0.3).float()
    keep = cumulative_keep(step)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    for n in range(1, T):
        assert torch.all(keep[0, n][keep[0, n - 1] == 0] == 0)
    m = 6
    changed = step.clone()
    changed[0, m:] = 1 - changed[0, m:]  # flip every decision of queries m..T-1
    assert torch.equal(cumulative_keep(changed)[0, :m], keep[0, :m])
    # a soft version behaves the same way
    soft = torch.rand(1, T, T)
    soft_changed = soft.clone()
    soft_changed[0, m:] = torch.rand(T - m, T)
    torch.testing.assert_close(cumulative_keep(soft_changed)[0, :m], cumulative_keep(soft)[0, :m])


def test_full_hard_decisions_are_zero_one(tiny_llama):
    """DCPPolicy.full at alpha = inf returns only 0/1 keep values and the k_int state (B, T, r)."""
    policy = dropping_policy(tiny_llama)
    x = torch.randn(2, 9, 64)
    positions = torch.arange(9).expand(2, 9)
    keep, state = policy.full(0, x, positions, math.inf)
    assert keep.shape == (2, 9, 9) and state.shape == (2, 9, policy.state_dim)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    soft, _ = policy.full(0, x, positions, 1.5)
    assert torch.all((soft >= 0) & (soft <= 1)) and not set(soft.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_keep_all_policy_matches_hf_model(family, request):
    """A DCP policy whose bias keeps everything reproduces the Hugging Face model's logits exactly."""
    base = request.getfixturevalue(family)
    policy = DCPPolicy(base.model.config.num_hidden_layers, _hidden(base), DCPConfig(init_bias=1e4, sink_tokens=0))
    lm = PrunedLM(base, policy)
    ids = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = lm.forward(ids)
        reference = base.model(ids).logits
    torch.testing.assert_close(result.logits, reference, atol=1e-5, rtol=0)
    assert result.kept_fraction == 1.0
    assert result.causal_entries.item() == 2 * (23 * 24 // 2) * 3  # rows * causal pairs * layers


def test_sinks_are_never_dropped(tiny_llama):
    """The first `sink_tokens` positions stay cached for every query, in full and step-wise mode."""
    sinks = 3
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama, sink_tokens=sinks))
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(2))
    x = torch.randn(1, 30, 64)
    keep, _ = lm.policy.full(1, x, torch.arange(30)[None], math.inf)
    assert torch.all(keep[0, :, :sinks].tril() == torch.ones(30, sinks).tril())
    assert keep[0].tril().sum() < 30 * 31 / 2 * 0.9  # other tokens do get dropped

    prefill = run_full(lm.adapter, lm.policy, ids, collect_prefill=True)
    cache = PrunedKVCache.from_prefill(prefill.prefill, torch.ones(1, 30, dtype=torch.bool))
    for layer in cache.layers:
        held = layer.positions[0][layer.valid[0]].tolist()
        assert held[:sinks] == list(range(sinks))
        assert held == sorted(held) and held[-1] == 29  # in order, the last token always held
    assert int(cache.held_entries()) < 30 * 3


@pytest.mark.parametrize("kind", ["dcp", "dcp-recent", "window"])
@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_full_forward_equals_stepwise_generation(family, kind, request):
    """Hard-mode masked full-sequence logits equal the logits of greedy step-wise generation whose cache
    physically loses the dropped tokens (batch of prompts with different lengths)."""
    base = request.getfixturevalue(family)
    policies = {
        "dcp": lambda: dropping_policy(base),
        "dcp-recent": lambda: dropping_policy(base, recent_tokens=3),
        "window": lambda: WindowPolicy(window=6, sink_tokens=2),
    }
    policy = policies[kind]()
    lm = PrunedLM(base, policy)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 11, 8)]
    result = assert_stepwise_equals_full(lm, prompts, 12)
    assert result.step_logits.shape == (3, 12, 257)
    assert [len(t) for t in result.token_ids] == [12, 12, 12]
    assert result.kv_kept_fraction < 0.9
    assert result.kv_bytes < result.dense_kv_bytes


def test_window_policy_kept_fraction(tiny_llama):
    """WindowPolicy(window=16, sinks=4) on T=64 keeps the 4 sinks plus the 12 most recent tokens per query;
    the kept fraction of a forward equals that count over the T(T+1)/2 causal pairs."""
    T, window, sinks = 64, 16, 4
    policy = WindowPolicy(window=window, sink_tokens=sinks)
    keep, state = policy.full(0, torch.zeros(1, T, 8), torch.arange(T)[None], math.inf)
    assert state is None
    assert int(keep[0].tril().sum(-1).max()) == window  # never more than `window` tokens per query

    expected = 0
    for n in range(T):
        for j in range(n + 1):
            if j < sinks or n - j < window - sinks:
                expected += 1
    assert expected == 78 + 13 + 14 + 15 + 49 * 16  # n < 12: all; n = 12..14: partial; n >= 15: 16
    assert int(keep[0].tril().sum()) == expected

    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        result = PrunedLM(tiny_llama, policy).forward(ids)
    assert result.kept_fraction == pytest.approx(expected / (T * (T + 1) / 2), rel=1e-6)


def test_window_policy_rejects_window_not_above_sinks():
    with pytest.raises(ValueError, match="larger than sink_tokens"):
        WindowPolicy(window=4, sink_tokens=4)


@pytest.mark.parametrize("alpha", [math.inf, 2.0])
def test_right_padding_does_not_change_real_rows(tiny_gpt2, alpha):
    """A right-padded batch gives each row the logits and counts of that row run alone (hard and soft)."""
    lm = PrunedLM(tiny_gpt2, dropping_policy(tiny_gpt2))
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 13:] = False
    with torch.no_grad():
        batch = lm.forward(ids, valid, alpha=alpha)
        alone = [lm.forward(ids[:1], alpha=alpha), lm.forward(ids[1:, :13], alpha=alpha)]
    torch.testing.assert_close(batch.logits[0], alone[0].logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.logits[1, :13], alone[1].logits[0], atol=1e-5, rtol=0)
    assert int(batch.causal_entries) == (210 + 91) * 3
    assert float(batch.kept_entries) == pytest.approx(float(alone[0].kept_entries + alone[1].kept_entries))


def test_generate_input_checks_and_eos(tiny_llama):
    """Empty prompts and max_new_tokens < 1 are refused; a row stops right after producing EOS."""
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama))
    with pytest.raises(PrunexError, match="at least one token"):
        lm.generate([[1, 2], []], 3)
    with pytest.raises(PrunexError, match="max_new_tokens"):
        lm.generate([[1, 2]], 0)
    first = lm.generate([[1, 2, 3]], 1).token_ids[0][0]
    result = lm.generate([[1, 2, 3], [9, 8, 7, 6]], 5, eos_token_id=first)
    assert result.token_ids[0] == [first]
    assert 1 <= len(result.token_ids[1]) <= 5


def test_recent_tokens_are_protected(tiny_llama):
    """With recent_tokens=R, query n never drops keys j > n - R (soft and hard)."""
    policy = dropping_policy(tiny_llama, sink_tokens=0, recent_tokens=3)
    x = torch.randn(1, 12, _hidden(tiny_llama))
    positions = torch.arange(12)[None]
    for alpha in (1.0, math.inf):
        keep, _ = policy.full(0, x, positions, alpha)
        n, j = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
        protected = (n - j < 3) & (j <= n)
        assert torch.all(keep[0][protected] == 1)
    hard, _ = policy.full(0, x, positions, math.inf)
    assert torch.any(hard[0][(n - j >= 3)] == 0)  # older tokens can still go


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_generation_on_cuda_equals_cpu(family, request):
    """PrunedLM.to("cuda"): same tokens, same K/V kept, logits within float noise (checked on an H100)."""
    base = request.getfixturevalue(family)
    lm = PrunedLM(base, dropping_policy(base))
    prompts = [[5, 9, 33, 70, 12, 8, 100], [3, 4], [200, 1, 2, 3]]
    cpu = lm.generate(prompts, max_new_tokens=12, return_logits=True)
    try:
        gpu = lm.to(torch.device("cuda")).generate(prompts, max_new_tokens=12, return_logits=True)
    finally:
        lm.to(torch.device("cpu"))  # the fixture's model is shared with other tests
    assert gpu.token_ids == cpu.token_ids and gpu.kv_kept_fraction == cpu.kv_kept_fraction
    assert torch.allclose(gpu.step_logits.cpu(), cpu.step_logits, atol=1e-4)
