"""The learned K/V scorer: per-K/V-head decisions held to a budget, physically removed per head."""

import json
import math

import pytest
import torch
from conftest import assert_stepwise_equals_full, run_ok
from safetensors.torch import load_file

from prunex.config import ScorerConfig
from prunex.models.sources import load_model
from prunex.prune.budget import kept_fraction_for_tokens
from prunex.prune.decoder import run_decoder
from prunex.prune.lm import PrunedLM
from prunex.prune.scorer import ScorerPolicy
from prunex.train.scorer_trainer import LeastSquares, describe_rule, log_importance


def random_scorer(base, kv_tokens: int, seed: int = 0, recent_fraction: float = 0.25,
                  rule: str = "ranked") -> ScorerPolicy:
    """A scorer with random weights: every head ranks tokens its own way."""
    config = base.model.config
    torch.manual_seed(seed)
    policy = ScorerPolicy(config.num_hidden_layers, config.hidden_size, config.num_key_value_heads,
                          ScorerConfig(sink_tokens=2, recent_fraction=recent_fraction, rule=rule),
                          kv_tokens=kv_tokens)
    with torch.no_grad():
        policy.weight.normal_()
    return policy.eval()


def reference_keep(scores: torch.Tensor, kv_tokens: int, recent: int, sinks: int) -> torch.Tensor:
    """Brute force over queries: (KV, T) scores -> (KV, T, T) keep, evicting one token at a time."""
    heads, T = scores.shape
    keep = torch.zeros(heads, T, T, dtype=torch.bool)
    for h in range(heads):
        held: list[int] = []
        for n in range(T):
            held.append(n)
            older = [j for j in held if j >= sinks and n - j >= recent]
            while len(held) > kv_tokens and older:
                worst = min(older, key=lambda j: (float(scores[h, j]), j))
                held.remove(worst)
                older.remove(worst)
            keep[h, n, held] = True
    return keep


@torch.no_grad()
def test_decisions_per_head_equal_a_one_at_a_time_eviction():
    """The folded, vectorised rule == evicting the lowest-scored older token whenever a head is over budget."""
    base = load_model("tiny-llama")
    policy = random_scorer(base, kv_tokens=9)
    adapter = PrunedLM(base, policy).adapter
    T = 40
    ids, positions = torch.randint(0, 200, (1, T)), torch.arange(T)[None]
    layer = run_decoder(adapter, policy, ids, positions, torch.ones(1, T, dtype=torch.bool)).layers[0]
    scores = policy.scores(0, adapter.attention_input(0, adapter.embed(ids, positions)))[0]  # (KV, T)
    expected = reference_keep(scores, 9, policy.recent_tokens, sinks=2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(layer.keep_new & causal, expected & causal)
    assert not torch.equal(expected[0], expected[1])  # the heads really decide apart
    assert int((layer.keep_new & causal).sum(-1).max()) == 9  # the budget holds per head and query


def test_stepwise_generation_removes_tokens_per_head_and_matches_full():
    """Prefill + step-wise decoding over a cache that loses entries per head == the full-sequence forward."""
    base = load_model("tiny-llama")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]
    result = assert_stepwise_equals_full(PrunedLM(base, random_scorer(base, kv_tokens=12)), prompts, 20)
    dense = PrunedLM(base, None).generate(prompts, 20)
    # rows end at 26 and 21 tokens, each head holding 12: kept 24 / 47 of the dense entries (+ each score)
    assert result.kv_kept_fraction == pytest.approx(24 / 47, rel=1e-6)
    assert result.kv_bytes < dense.kv_bytes * 0.55


def reference_attention_keep(logits: torch.Tensor, prior: torch.Tensor, kv_tokens: int, sinks: int,
                             weight: float) -> torch.Tensor:
    """Brute force: (KV, G, T, T) attention logits and (KV, T) priors -> (KV, T, T) keep. Each query joins, the
    head evicts (while over budget) the unprotected token with the lowest log(attention the previous query
    paid it) + weight x prior, then the query attends over what is held."""
    heads, _, T, _ = logits.shape
    keep = torch.zeros(heads, T, T, dtype=torch.bool)
    for h in range(heads):
        held: list[int] = []
        last = torch.zeros(T)
        for n in range(T):
            held.append(n)
            if len(held) > kv_tokens:
                candidates = [j for j in held if j >= sinks and j != n]
                value = {j: math.log(max(float(last[j]), 1e-12)) + weight * float(prior[h, j]) for j in candidates}
                worst = min(candidates, key=lambda j: (value[j], j))
                held.remove(worst)
            keep[h, n, held] = True
            mask = torch.full((T,), -math.inf)
            mask[held] = 0
            last = (logits[h, :, n] + mask).softmax(-1).mean(0)
    return keep


@torch.no_grad()
def test_the_attention_rule_equals_a_one_at_a_time_eviction():
    """rule "attention": per head, the lowest log(latest attention) + prior_weight x learned score leaves."""
    base = load_model("tiny-llama")
    policy = random_scorer(base, kv_tokens=9, rule="attention")
    adapter = PrunedLM(base, policy).adapter
    T = 40
    ids, positions = torch.randint(0, 200, (1, T)), torch.arange(T)[None]
    captured = {}
    run = run_decoder(adapter, policy, ids, positions, torch.ones(1, T, dtype=torch.bool),
                      observe=lambda layer, x, q, k: captured.setdefault(layer, (x, q, k)))
    x, q, k = captured[0]
    KV = k.shape[1]
    logits = q.reshape(KV, -1, T, q.shape[-1]) @ k[0].transpose(-1, -2)[:, None] * adapter.attention_scale(0)
    expected = reference_attention_keep(logits, policy.scores(0, x)[0], 9, sinks=2, weight=1.0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(run.layers[0].keep_new & causal, expected & causal)
    assert not torch.equal(expected[0], expected[1])  # the heads decide apart
    assert int((run.layers[0].keep_new & causal).sum(-1).max()) == 9


def test_the_attention_rule_steps_like_the_full_sequence():
    """Prefill + step-wise decoding with the attention rule (each cached entry keeps its latest attention and
    its prior, rescored every step) == the full-sequence forward, per head."""
    base = load_model("tiny-llama")
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]
    result = assert_stepwise_equals_full(PrunedLM(base, random_scorer(base, kv_tokens=12, rule="attention")),
                                         prompts, 20)
    assert result.kv_kept_fraction == pytest.approx(24 / 47, rel=1e-6)


def test_least_squares_recovers_a_linear_target():
    """The closed-form fit from accumulated sums finds the weights and bias that made the targets."""
    torch.manual_seed(0)
    weight, bias = torch.randn(1, 8, 3), torch.randn(1, 3)
    sums = LeastSquares(layers=1, features=8, heads=3)
    for _ in range(4):  # window by window, as the trainer adds them
        x = torch.randn(100, 8)
        sums.add(0, x, x @ weight[0] + bias[0])
    fitted_weight, fitted_bias = sums.solve(ridge=0.0)
    torch.testing.assert_close(fitted_weight, weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-4, rtol=0)


def test_targets_are_the_most_attention_a_far_query_pays():
    """log_importance == a loop over keys, query heads of the group and queries at least `window` later."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8)
    targets = log_importance(q, k, scale=8**-0.5, target_window=3)  # (1, 2, 12)
    probs = (q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 8**-0.5).masked_fill(
        ~torch.ones(12, 12, dtype=torch.bool).tril(), -float("inf")).softmax(-1)[0]  # (4, 12, 12)
    for head in range(2):
        for j in range(12):
            later = [float(probs[g, n, j]) for g in (2 * head, 2 * head + 1) for n in range(j + 3, 12)]
            assert float(targets[0, head, j]) == pytest.approx(math.log(max(later, default=0.0) + 1e-6), abs=1e-5)


def test_train_scorer_then_compare_and_generate(tmp_path, text_file):
    """`prunex train scorer` writes a checkpoint that `eval compare` holds to each budget and `eval ppl` runs."""
    out = tmp_path / "scorer"
    stdout = run_ok("train", "scorer", "--model", "tiny-llama", "--text", str(text_file), "--context", "64",
                    "--windows", "2", "--validation-windows", "1", "--target-kv", "0.5", "--threads", "1",
                    "--out", str(out))
    meta = json.loads((out / "pruning.json").read_text())
    assert meta["method"] == "scorer" and meta["config"]["kv_budget"] == 0.5 and meta["config"]["context"] == 64
    ratios = meta["training"]["figures"]["validation"]["ppl_ratio_by_rule"]  # rule -> budget -> ratio
    assert set(ratios) == {"ranked, recent 0.25", "ranked, recent 0.5", "ranked, recent 0.75",
                           "attention, prior x0.5", "attention, prior x1", "attention, prior x2"}
    assert all(set(by_budget) == {"0.5", "1.0"} for by_budget in ratios.values())  # --target-kv and twice it
    mean = {rule: sum(by_budget.values()) / 2 for rule, by_budget in ratios.items()}
    chosen = describe_rule(ScorerConfig(**meta["config"]))  # the rule that did best on validation, recorded
    assert mean[chosen] == min(mean.values()) and f"wrote {out}" in stdout and f"validation: {chosen}" in stdout
    report = json.loads(run_ok("eval", "compare", str(out), "--text-file", str(text_file), "--context", "64",
                               "--windows", "1", "--budgets", "0.25,0.5", "--policies", "tova", "--json"))
    rows = [(r["policy"], r["kv_budget"]) for r in report["results"]]
    assert rows == [("scorer", 0.25), ("tova", 0.25), ("scorer", 0.5), ("tova", 0.5)]
    for row in report["results"]:  # the same budget per head as the rule's per layer
        assert row["kv_kept"] == pytest.approx(kept_fraction_for_tokens(row["kv_tokens"], 64), abs=1e-6)
    ppl = json.loads(run_ok("eval", "ppl", str(out), "--text-file", str(text_file), "--context", "64",
                            "--windows", "1", "--json"))
    assert ppl["kept_fraction"] == pytest.approx(kept_fraction_for_tokens(19, 64), abs=1e-6)  # 0.5 at 64: 19


def test_an_interrupted_fit_resumes_to_the_uninterrupted_scorer(tmp_path, text_file, monkeypatch):
    """A fit stopped after its first window (its state saved) goes on with resume=True to the same weights."""
    from prunex.config import ScorerTrainConfig
    from prunex.train import scorer_trainer

    config = ScorerTrainConfig(model="tiny-llama", texts=[str(text_file)], context=64, windows=3,
                               validation_windows=1, target_kv=0.5, recent_fractions=[0.5], save_every=0.0)
    whole = scorer_trainer.train_scorer(config, tmp_path / "whole", show_progress=False)
    calls = []

    def stop_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the session ends during the second window
        return run_decoder(*args, **kwargs)

    monkeypatch.setattr(scorer_trainer, "run_decoder", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        scorer_trainer.train_scorer(config, tmp_path / "cut", show_progress=False)
    assert (tmp_path / "cut" / "train-state.pt").is_file()
    monkeypatch.setattr(scorer_trainer, "run_decoder", run_decoder)
    resumed = scorer_trainer.train_scorer(config, tmp_path / "cut", show_progress=False, resume=True)
    assert resumed.training["figures"]["validation"] == whole.training["figures"]["validation"]
    weights = [load_file(str(tmp_path / run / "pruning.safetensors")) for run in ("whole", "cut")]
    for name in ("weight", "bias"):
        assert torch.equal(weights[0][name], weights[1][name])
    assert not (tmp_path / "cut" / "train-state.pt").exists()
