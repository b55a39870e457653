"""Scoring a prompt: the log-probability of each of its tokens given the ones before, through the pruned graph.

The prompt runs once through the step graph with an empty past, a chunk at a time (`PromptRun`), logits wanted
at every position: the same computation as `prunex eval ppl DIR` (it calls `score_prompt`), so each scored token
sees the context the pruning heads kept (hard cumulative decisions), not the full one. `score_prompt` leaves the
KV cache alone; a Generator request with `prompt_logprobs` gets the same figures from its own prefill (one pass,
see generator.py). `PromptScorer` turns each chunk's logits into the figures and lets them go, so memory per
scored token is its log-probability and its top-k, never a row of the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from prunex.runtime.engine import DecoderEngine

SOFTMAX_ROWS = 16  # positions whose float64 log-softmax is held at once (16 x 49152 x 8 bytes = 6 MB)


@dataclass
class PromptLogprobs:
    """Per-token figures of a prompt of T tokens."""

    token_logprobs: np.ndarray  # (T-1,) float64: log p(token t | tokens < t) for t = 1..T-1
    top_logprobs: list[list[tuple[int, float]]]  # T-1 lists: the most likely tokens at each position, best first


@dataclass
class PromptScore:
    """A prompt scored without entering the cache."""

    logprobs: PromptLogprobs
    next_logits: np.ndarray  # (vocab,) logits after the last token (what a first generated token comes from)
    kv_entries: int  # entries the cache would keep after the prompt, summed over layers


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in the dtype given."""
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class PromptScorer:
    """Gathers a prompt's per-token log-probabilities (float64) and top-`top` alternatives from its logits, given
    chunk by chunk in order; keeps nothing of a chunk but those figures."""

    def __init__(self, prompt: list[int], top: int = 0) -> None:
        self.targets = np.asarray(prompt[1:], dtype=np.int64)  # (T-1,): position t predicts token t + 1
        self.top = top
        self._chosen: list[np.ndarray] = []
        self._alternatives: list[list[tuple[int, float]]] = []
        self.scored = 0  # positions scored so far

    def add(self, logits: np.ndarray) -> None:
        """The logits (S, vocab) of the next S positions (the prompt's last position predicts nothing)."""
        usable = logits[:len(self.targets) - self.scored]  # (S', vocab)
        for first in range(0, len(usable), SOFTMAX_ROWS):
            rows = log_softmax(usable[first:first + SOFTMAX_ROWS].astype(np.float64))  # (n, vocab)
            targets = self.targets[self.scored:self.scored + len(rows)]  # (n,)
            self._chosen.append(rows[np.arange(len(rows)), targets])
            if self.top:
                best = np.argpartition(-rows, self.top - 1, axis=-1)[:, :self.top]  # (n, top) unordered
                values = np.take_along_axis(rows, best, -1)
                order = np.argsort(-values, axis=-1)
                best, values = np.take_along_axis(best, order, -1), np.take_along_axis(values, order, -1)
                self._alternatives += [list(zip(i.tolist(), v.tolist())) for i, v in zip(best, values)]
            self.scored += len(rows)

    def result(self) -> PromptLogprobs:
        """The figures of every position given so far."""
        chosen = np.concatenate(self._chosen) if self._chosen else np.zeros(0)
        alternatives = self._alternatives if self.top else [[] for _ in range(len(chosen))]
        return PromptLogprobs(chosen, alternatives)


def prompt_logprobs(logits: np.ndarray, prompt: list[int], top: int = 0) -> PromptLogprobs:
    """From the logits at every position of a prompt (T, vocab): its tokens' log-probabilities (float64) and
    the `top` most likely tokens at each position."""
    scorer = PromptScorer(prompt, top)
    scorer.add(logits)
    return scorer.result()


def score_prompt(engine: DecoderEngine, prompt: list[int], top: int = 0) -> PromptScore:
    """Score a prompt (see the module docstring); the cache is not touched."""
    run = engine.prompt_run(prompt, score_top=top)
    run.finish()
    kept = int(run.cache.held_entries().sum())
    return PromptScore(run.scorer.result(), run.next_logits, kept)
