"""Fitting a learned K/V scorer (`prunex.prune.scorer`) from forward passes of the dense model, no backward.

For every training window, each layer's attention probabilities give each token's target: the largest
attention any query at least `target_window` tokens later pays it, over the query heads that read its K/V head
(log, per K/V head). A ridge regression from the layer's attention input to those targets is fitted in closed
form from sums (X^T X, X^T Y) accumulated window by window, so a run can stop and `--resume` at any window.
Then the rule that holds it to a budget is chosen on validation windows of the same sources: the ranked rule at
each recent share of the budget, or the attention rule at each weight of the prior (see `prunex.prune.scorer`),
by the mean perplexity ratio at `target_kv` and at twice it, so the rule holds across budgets rather than at one
point; the scorer is saved as a checkpoint with that rule and `target_kv` as its default budget.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from prunex.checkpoints.meta import CheckpointMeta, save_checkpoint
from prunex.config import ScorerConfig, ScorerTrainConfig, to_dict
from prunex.data.text import split_text, token_windows
from prunex.errors import PrunexError
from prunex.eval.perplexity import evaluate_perplexity
from prunex.loading import load_lm
from prunex.prune.budget import tokens_for_kept_fraction
from prunex.prune.decoder import run_decoder
from prunex.prune.lm import PrunedLM
from prunex.prune.scorer import ScorerPolicy
from prunex.train.progress import TrainProgress
from prunex.train.resume import TrainState

logger = logging.getLogger(__name__)


def log_importance(q: Tensor, k: Tensor, scale: float, target_window: int) -> Tensor:
    """q (B, H, T, D), k (B, KV, T, D) of a causal window -> (B, KV, T): log of the most attention a query at
    least `target_window` positions later pays each token, over the query heads that read its K/V head."""
    B, H, T, _ = q.shape
    heads = k.shape[1]
    index = torch.arange(T, device=q.device)
    later = index[:, None] >= index[None, :]  # (T, T): query n may see key j
    far = index[:, None] >= index[None, :] + target_window
    logits = q @ k.repeat_interleave(H // heads, 1).transpose(-1, -2) * scale  # (B, H, T, T)
    probs = logits.masked_fill(~later, -math.inf).softmax(-1).masked_fill(~far, 0.0)
    most = probs.amax(2).view(B, heads, H // heads, T).amax(2)  # (B, KV, T)
    return (most + 1e-6).log()


class LeastSquares:
    """Per layer, the sums of a ridge regression from (d,) features (+ a bias) to one target per K/V head."""

    def __init__(self, layers: int, features: int, heads: int) -> None:
        self.xtx = torch.zeros(layers, features + 1, features + 1, dtype=torch.float64)
        self.xty = torch.zeros(layers, features + 1, heads, dtype=torch.float64)

    def add(self, layer: int, x: Tensor, y: Tensor) -> None:
        """x (N, d) features, y (N, KV) targets."""
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1).double()
        self.xtx[layer] += x.T @ x
        self.xty[layer] += x.T @ y.double()

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """(L, d, KV) weights and (L, KV) biases minimising the squared error + ridge x mean(x^2) x |w|^2."""
        solutions = []
        for xtx, xty in zip(self.xtx, self.xty):
            penalty = ridge * xtx.diagonal()[:-1].mean() * torch.eye(len(xtx), dtype=xtx.dtype)
            penalty[-1, -1] = 0.0  # the bias is not shrunk
            solutions.append(torch.linalg.solve(xtx + penalty, xty))
        solved = torch.stack(solutions).float()  # (L, d + 1, KV)
        return solved[:, :-1], solved[:, -1]


def source_windows(tokenizer, texts: list[str], split: str, context: int, per_source: int, seed: int) -> Tensor:
    """(N, context) windows, `per_source` (or all there are) from each source's `split` (documents shuffled into
    the splits with `seed`), one source after the other."""
    parts = [token_windows(tokenizer, split_text(text, split, seed), context, per_source) for text in texts]
    return torch.cat(parts)


def describe_rule(config: ScorerConfig) -> str:
    """A scorer's rule in words: "ranked, recent 0.5" or "attention, prior x1.0"."""
    if config.rule == "attention":
        return f"attention, prior x{config.prior_weight:g}"
    return f"ranked, recent {config.recent_fraction:g}"


def _check(config: ScorerTrainConfig) -> None:
    if not config.texts:
        raise PrunexError("give at least one --text to fit the scorer on")
    if not 0 < config.target_kv < 1:
        raise PrunexError(f"--target-kv is a kept fraction in (0, 1), got {config.target_kv}")
    if config.target_window < 1 or config.target_window >= config.context:
        raise PrunexError(f"--target-window must be in [1, context), got {config.target_window}")
    if not all(0 <= f < 1 for f in config.recent_fractions):
        raise PrunexError("the recent shares of the budget must be in [0, 1)")
    if not config.recent_fractions and not config.prior_weights:
        raise PrunexError("give at least one recent share (ranked rule) or prior weight (attention rule)")


@torch.no_grad()
def train_scorer(config: ScorerTrainConfig, out_dir: str | Path, show_progress: bool = True,
                 resume: bool = False) -> CheckpointMeta:
    """Fit a scorer for `config.model` and write its checkpoint to `out_dir`; returns its metadata."""
    _check(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    lm = load_lm(config.model)
    if lm.policy is not None:
        raise PrunexError(f"{config.model} is a pruning checkpoint; give the base model to fit a scorer on")
    lm.check_length(config.context)
    adapter = lm.adapter
    per_source = math.ceil(config.windows / len(config.texts))
    windows = source_windows(lm.tokenizer, config.texts, "train", config.context, per_source,
                             config.seed)[: config.windows]
    sums = LeastSquares(adapter.num_layers, adapter.hidden_size, adapter.num_kv_heads)
    saver = TrainState(out_dir, to_dict(config), every_s=config.save_every)
    state = (saver.load() if resume else None) or {"done": 0, "seconds": 0.0}
    if "xtx" in state:
        sums.xtx, sums.xty = state["xtx"], state["xty"]
    keys = slice(config.sink_tokens, config.context - config.target_window)  # tokens with a target

    def fit(layer: int, x: Tensor, q: Tensor, k: Tensor) -> None:
        y = log_importance(q, k, adapter.attention_scale(layer), config.target_window)  # (1, KV, T)
        sums.add(layer, x[0, keys], y[0, :, keys].T)

    started = time.time()
    with TrainProgress(len(windows), show_progress, start=state["done"]) as bar:
        for done in range(state["done"], len(windows)):
            ids = windows[done:done + 1]
            run_decoder(adapter, None, ids, torch.arange(config.context)[None],
                        torch.ones_like(ids, dtype=torch.bool), observe=fit)
            bar.update({"tokens/s": (done + 1 - state["done"]) * config.context / (time.time() - started)})
            if saver.due() and done + 1 < len(windows):
                saver.save({"done": done + 1, "xtx": sums.xtx, "xty": sums.xty,
                            "seconds": state["seconds"] + time.time() - started}, f"window {done + 1}")
    elapsed = time.time() - started
    seconds = state["seconds"] + elapsed
    fitted = len(windows) - state["done"]
    logger.info("fitted on %d windows x %d tokens in %.0f s", len(windows), config.context, seconds)

    weight, bias = sums.solve(config.ridge)
    policy = ScorerPolicy(adapter.num_layers, adapter.hidden_size, adapter.num_kv_heads,
                          ScorerConfig(sink_tokens=config.sink_tokens, kv_budget=config.target_kv,
                                       context=config.context))
    policy.weight.copy_(weight.half().float())  # as the checkpoint stores them
    policy.bias.copy_(bias.half().float())
    validation = source_windows(lm.tokenizer, config.texts, "validation", config.context, config.validation_windows,
                                config.seed)
    budgets = sorted({config.target_kv, min(1.0, 2 * config.target_kv)})
    candidates = ([{"rule": "ranked", "recent_fraction": f} for f in config.recent_fractions]
                  + [{"rule": "attention", "prior_weight": w} for w in config.prior_weights])
    ratios: dict[str, dict[str, float]] = {}  # rule -> budget -> perplexity ratio
    for candidate in candidates:
        policy.config = replace(policy.config, **candidate)
        rule = describe_rule(policy.config)
        for budget in budgets:
            kv_tokens = tokens_for_kept_fraction(budget, config.context)
            report = evaluate_perplexity(PrunedLM(lm.base, policy.set_budget(kv_tokens)), validation,
                                         show_progress=False)
            ratios.setdefault(rule, {})[str(budget)] = round(report.ppl_ratio, 5)
            logger.info("%s at %.3f: perplexity x%.4f of dense", rule, budget, report.ppl_ratio)
    means = [sum(by_budget.values()) / len(by_budget) for by_budget in ratios.values()]
    policy.config = replace(policy.config, **candidates[means.index(min(means))])
    policy.set_budget(tokens_for_kept_fraction(config.target_kv, config.context))
    figures = {
        "fit_seconds": round(seconds, 1),
        "tokens_per_s": round(fitted * config.context / max(elapsed, 1e-9), 1),
        "validation": {"windows": len(validation), "budgets": budgets, "ppl_ratio_by_rule": ratios},
    }
    meta = CheckpointMeta(method="scorer", base_model=lm.base.model_id, base_model_hash=lm.base.weights_hash,
                          config=to_dict(policy.config), training={"config": to_dict(config), "figures": figures})
    save_checkpoint(out_dir, meta, {"weight": policy.weight, "bias": policy.bias})
    saver.finish()
    return meta
