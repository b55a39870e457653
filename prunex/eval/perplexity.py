"""Perplexity of a pruned LM and of its dense base on the same windows, with the sparsity it reached."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from prunex.console import progress
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM


@dataclass
class PerplexityReport:
    perplexity: float  # pruned (hard decisions)
    dense_perplexity: float  # same windows, no pruning
    ppl_ratio: float  # perplexity / dense_perplexity
    sparsity: float  # fraction of causal key/value entries pruned, over layers and positions
    kept_fraction: float  # 1 - sparsity
    tokens: int  # predicted tokens per run
    windows: int
    context: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summed_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood of (B, T) windows from their (B, T, V) logits."""
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))


@torch.no_grad()
def evaluate_perplexity(lm: PrunedLM, windows: torch.Tensor, show_progress: bool = True) -> PerplexityReport:
    """Pruned and dense perplexity over (N, T) token windows, one window at a time."""
    nll = dense_nll = kept = causal = 0.0
    for window in progress(windows, "perplexity", enabled=show_progress):
        window = window.to(lm.device)
        pruned = lm.forward(window[None])
        dense = run_full(lm.adapter, None, window[None])
        nll += summed_nll(pruned.logits, window[None])
        dense_nll += summed_nll(dense.logits, window[None])
        kept += float(pruned.kept_entries)
        causal += float(pruned.causal_entries)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    perplexity, dense_perplexity = math.exp(nll / tokens), math.exp(dense_nll / tokens)
    return PerplexityReport(
        perplexity=perplexity, dense_perplexity=dense_perplexity, ppl_ratio=perplexity / dense_perplexity,
        sparsity=1 - kept / causal, kept_fraction=kept / causal, tokens=tokens,
        windows=windows.shape[0], context=windows.shape[1],
    )
