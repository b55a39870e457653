"""Perplexity at equal KV budget: dense, the learned policy (DCP) and every training-free policy, on the same
windows. Every kept fraction is the one `prunex eval ppl` reports: causal key/value entries kept over all
causal entries, over layers and positions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunex.console import progress
from prunex.eval.perplexity import summed_nll
from prunex.prune.budget import BudgetedPolicy, tokens_for_kept_fraction
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM
from prunex.prune.scorer import ScorerPolicy
from prunex.prune.training_free import TRAINING_FREE, training_free_policy


@dataclass
class CompareRow:
    policy: str  # "dcp" (no budget), "dcp+budget", "scorer" (learned, per K/V head) or a training-free policy
    kv_budget: float | None  # the target kept fraction (None: the policy's own)
    kv_tokens: int | None  # the per-query cap it became for this context
    kv_kept: float  # measured kept fraction
    perplexity: float
    ratio_to_dense: float


@dataclass
class CompareReport:
    results: list[CompareRow]
    dense_perplexity: float
    windows: int
    context: int
    kept_measure: str = "fraction of causal key/value entries kept, averaged over layers and positions"

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [asdict(row) for row in self.results]}


@dataclass
class _Run:
    name: str
    budget: float | None
    tokens: int | None
    lm: PrunedLM
    nll: float = 0.0
    kept: float = 0.0
    causal: float = 0.0


@torch.no_grad()
def compare_policies(lm: PrunedLM, windows: torch.Tensor, budgets: list[float],
                     policies: list[str] | None = None, show_progress: bool = True,
                     batch_size: int = 4) -> CompareReport:
    """Dense, `lm`'s own policy (DCP: unbudgeted and capped at each budget; a scorer: held to each budget) and
    each training-free policy at each budget, over the same (N, T) windows, `batch_size` windows per forward
    (H2O and TOVA loop over positions: a batch shares that loop). `policies` defaults to all training-free ones."""
    context = windows.shape[1]
    runs: list[_Run] = []
    learned = lm.policy
    scorer = isinstance(learned, ScorerPolicy)
    if learned is not None and not scorer:
        runs.append(_Run("dcp", None, None, lm))
    for budget in budgets:
        cap = tokens_for_kept_fraction(budget, context)
        if scorer:
            runs.append(_Run("scorer", budget, cap, PrunedLM(lm.base, learned.with_budget(cap))))
        elif learned is not None:
            runs.append(_Run("dcp+budget", budget, cap, PrunedLM(lm.base, BudgetedPolicy(learned, cap))))
        for name in policies or list(TRAINING_FREE):
            runs.append(_Run(name, budget, cap, PrunedLM(lm.base, training_free_policy(name, cap))))
    dense_nll = 0.0
    for ids in progress(windows.to(lm.device).split(batch_size), "compare", enabled=show_progress):
        dense_nll += summed_nll(run_full(lm.adapter, None, ids).logits, ids)
        for run in runs:
            result = run.lm.forward(ids)
            run.nll += summed_nll(result.logits, ids)
            run.kept += float(result.kept_entries)
            run.causal += float(result.causal_entries)
    predicted = windows.shape[0] * (context - 1)
    dense = math.exp(dense_nll / predicted)
    rows = [
        CompareRow(run.name, run.budget, run.tokens, run.kept / run.causal, math.exp(run.nll / predicted),
                   math.exp(run.nll / predicted) / dense)
        for run in runs
    ]
    return CompareReport(rows, dense, windows.shape[0], context)


def plot_comparison(report: CompareReport, path: Path) -> None:
    """Perplexity against kept fraction, one line a policy, dense as a horizontal line; written as a PNG."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(row.policy for row in report.results))
    for name in names:
        rows = sorted((r for r in report.results if r.policy == name), key=lambda r: r.kv_kept)
        style = "*" if name == "dcp" else "o-"
        axes.plot([r.kv_kept for r in rows], [r.perplexity for r in rows], style, label=name, markersize=8)
    axes.axhline(report.dense_perplexity, color="black", linestyle="--", label="dense")
    axes.set_xlabel("KV kept (fraction of causal entries)")
    axes.set_ylabel("perplexity")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_title(f"{report.windows} windows x {report.context} tokens")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
