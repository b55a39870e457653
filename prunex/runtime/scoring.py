"""Scoring a prompt: the log-probability of each of its tokens given the ones before, through the pruned graph.

The prompt runs once through the step graph with an empty past and logits wanted at every position: the same
computation as `prunex eval ppl DIR` (it calls `score_prompt`), so each scored token sees the context the
pruning heads kept (hard cumulative decisions), not the full one. `score_prompt` leaves the KV cache alone; a
Generator request with `prompt_logprobs` gets the same figures from its own prefill (one pass, see
generator.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunex.runtime.engine import DecoderEngine


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


def prompt_logprobs(logits: np.ndarray, prompt: list[int], top: int = 0) -> PromptLogprobs:
    """From the logits at every position of a prompt (T, vocab): its tokens' log-probabilities (float64) and
    the `top` most likely tokens at each position."""
    T = len(prompt)
    logprobs = log_softmax(logits[:-1].astype(np.float64))  # (T-1, vocab): row t predicts token t+1
    chosen = logprobs[np.arange(T - 1), prompt[1:]]  # (T-1,)
    alternatives: list[list[tuple[int, float]]] = [[] for _ in range(T - 1)]
    if top and T > 1:
        best = np.argpartition(-logprobs, top - 1, axis=-1)[:, :top]  # (T-1, top) unordered
        best_values = np.take_along_axis(logprobs, best, -1)
        order = np.argsort(-best_values, axis=-1)
        best, best_values = np.take_along_axis(best, order, -1), np.take_along_axis(best_values, order, -1)
        alternatives = [list(zip(ids.tolist(), values.tolist())) for ids, values in zip(best, best_values)]
    return PromptLogprobs(chosen, alternatives)


def score_prompt(engine: DecoderEngine, prompt: list[int], top: int = 0) -> PromptScore:
    """Score a prompt (see the module docstring); the cache is not touched."""
    logits, cache = engine.run_prompt(prompt, all_logits=True)  # (T, vocab)
    kept = int(cache.held_entries().sum())
    return PromptScore(prompt_logprobs(logits, prompt, top), logits[-1], kept)
