"""Training-free policies (window, sinks, H2O, TOVA) and a learned policy held to a budget: exact budgets,
protected tokens, and the same decisions full-sequence and step by step."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_stepwise_equals_full, dropping_policy

from prunex.errors import PrunexError
from prunex.prune.budget import BudgetedPolicy, budget_tokens, kept_fraction_for_tokens, tokens_for_kept_fraction
from prunex.prune.decoder import run_decoder
from prunex.prune.lm import PrunedLM
from prunex.prune.training_free import TRAINING_FREE, training_free_policy

T = 40


def _keeps(lm: PrunedLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the (B, T, T) causal keep decisions of a full-sequence run."""
    B, S = ids.shape
    positions = torch.arange(S).expand(B, S)
    with torch.no_grad():
        run = run_decoder(lm.adapter, lm.policy, ids, positions, torch.ones(B, S, dtype=torch.bool))
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    return [layer.keep_new & causal for layer in run.layers]


@pytest.mark.parametrize("name", list(TRAINING_FREE))
def test_policy_keeps_exactly_its_budget_and_the_newest_token(name, tiny_llama):
    budget = 12
    lm = PrunedLM(tiny_llama, training_free_policy(name, budget))
    ids = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(0))
    for keep in _keeps(lm, ids):
        held = keep.sum(-1)  # (B, T) entries each query attends to
        assert held.tolist() == [[min(n + 1, budget) for n in range(T)]] * 2
        assert bool(keep.diagonal(dim1=1, dim2=2).all())  # the newest token is never dropped
        if name == "sinks":
            assert bool(keep[:, :, :4].tril().eq(torch.ones(4, dtype=torch.bool).expand(T, 4).tril()).all())
        later = keep[:, 1:] & ~keep[:, :-1]  # kept by query n+1 but not by n (among old keys): never
        assert not bool(later[:, :, :-1].tril(diagonal=-1).any())


def test_attention_policies_differ_from_the_window(tiny_llama):
    """H2O and TOVA keep some old tokens a window would drop (they really use the attention)."""
    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(2))
    window = _keeps(PrunedLM(tiny_llama, training_free_policy("window", 10)), ids)
    for name in ("h2o", "tova"):
        other = _keeps(PrunedLM(tiny_llama, training_free_policy(name, 10)), ids)
        assert any(not torch.equal(a, b) for a, b in zip(window, other))


@pytest.mark.parametrize("name", ["h2o", "tova", "sinks", "dcp+budget"])
@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_full_forward_equals_stepwise_generation(name, family, request):
    """Full-sequence logits equal greedy step-wise generation whose cache physically loses the dropped
    tokens (the H2O/TOVA scores live in the cache), for a batch of prompts of different lengths."""
    base = request.getfixturevalue(family)
    policy = (BudgetedPolicy(dropping_policy(base), kv_tokens=7, sink_tokens=1) if name == "dcp+budget"
              else training_free_policy(name, 7, sink_tokens=2))
    lm = PrunedLM(base, policy)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 11, 8)]
    result = assert_stepwise_equals_full(lm, prompts, 10)
    total = [len(p) + 10 - 1 for p in prompts]  # tokens in the cache after the last step, per row
    assert result.kv_kept_fraction == pytest.approx(7 * 3 / sum(total), rel=1e-6) if name != "dcp+budget" \
        else result.kv_kept_fraction <= 7 * 3 / sum(total)


def test_budgeted_dcp_keeps_at_most_the_budget_and_its_sinks(tiny_llama):
    lm = PrunedLM(tiny_llama, dropping_policy(tiny_llama, sink_tokens=2))
    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(4))
    free = _keeps(lm, ids)
    lm.policy = BudgetedPolicy(lm.policy, kv_tokens=6, sink_tokens=2)
    capped = _keeps(lm, ids)
    for a, b in zip(free, capped):
        assert int(b.sum(-1).max()) <= 6
        assert not bool((b & ~a).any())  # the budget only removes
        assert bool(b[0, 2:, :2].all()) and bool(b[0].diagonal().all())


def test_budget_fraction_to_tokens():
    assert kept_fraction_for_tokens(1024, 1024) == 1.0
    for fraction in (0.1, 0.25, 0.5):
        n = tokens_for_kept_fraction(fraction, 1024)
        assert kept_fraction_for_tokens(n, 1024) >= fraction > kept_fraction_for_tokens(n - 1, 1024)
    assert budget_tokens(None, 100, 1024) == 100
    with pytest.raises(PrunexError, match="exactly one"):
        budget_tokens(0.5, 100, 1024)
    with pytest.raises(PrunexError, match=r"\(0, 1\]"):
        budget_tokens(1.5, None, 1024)
    with pytest.raises(PrunexError, match="must exceed"):
        training_free_policy("h2o", 1)
    with pytest.raises(PrunexError, match="not available"):
        training_free_policy("oracle", 10)


def test_cli_eval_ppl_policy_keeps_the_budget(tmp_path):
    """`eval ppl --policy h2o --kv-budget 0.5` keeps the cap's closed-form share; a dense model cannot be capped."""
    import json

    from typer.testing import CliRunner

    from prunex.cli.main import app

    text = tmp_path / "text.txt"
    text.write_text("Pruning keeps the tokens that matter and forgets the rest. " * 40, encoding="utf-8")
    runner = CliRunner()
    args = ["eval", "ppl", "tiny-llama", "--text-file", str(text), "--context", "32", "--windows", "2", "--json"]
    result = runner.invoke(app, [*args, "--policy", "h2o", "--kv-budget", "0.5"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kept_fraction"] == pytest.approx(kept_fraction_for_tokens(tokens_for_kept_fraction(0.5, 32), 32))
    assert out["kept_fraction"] >= 0.5
    refused = runner.invoke(app, [*args, "--kv-tokens", "8"])
    assert refused.exit_code != 0 and "no learned policy" in str(refused.exception)


def test_cli_eval_compare_json_and_plot(tmp_path):
    """`eval compare` prints one JSON document with every policy at every budget, and writes the plot."""
    import json

    from typer.testing import CliRunner

    from prunex.cli.main import app

    text = tmp_path / "text.txt"
    text.write_text("Pruning keeps the tokens that matter and forgets the rest. " * 40, encoding="utf-8")
    plot = tmp_path / "compare.png"
    result = CliRunner().invoke(app, ["eval", "compare", "tiny-llama", "--text-file", str(text), "--context", "32",
                                      "--windows", "1", "--budgets", "0.25,0.5", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["policy"] for r in out["results"]] == list(TRAINING_FREE) * 2  # a dense model: no learned rows
    for row in out["results"]:
        assert row["kv_kept"] == pytest.approx(kept_fraction_for_tokens(row["kv_tokens"], 32))
        assert row["ratio_to_dense"] == pytest.approx(row["perplexity"] / out["dense_perplexity"])
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
