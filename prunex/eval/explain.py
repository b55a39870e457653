"""Which tokens each layer dropped, and when: the data behind `prunex explain`.

One full-sequence run under the policy gives, per layer, the cumulative keep decisions (T, T); a token's
survival is how many later queries still saw it. Tokens are classed as punctuation (and whitespace), stop
words, numbers or other, to check the DCP paper's finding that mostly punctuation and stop words go.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from torch import Tensor

from prunex.prune.decoder import run_decoder
from prunex.prune.lm import PrunedLM

TOKEN_CLASSES = ("punctuation", "stop word", "number", "other")


@dataclass
class DropMap:
    tokens: list[str]  # T decoded tokens
    classes: list[str]  # T token classes (TOKEN_CLASSES)
    dropped_at: Tensor  # (L, T) int: the query position from which the layer no longer kept the token; -1: never
    survived: Tensor  # (L, T) int: later queries that still saw the token (its own excluded)

    @property
    def num_layers(self) -> int:
        return self.dropped_at.shape[0]

    def drop_rates(self) -> dict[str, list[float | None]]:
        """Per class, per layer: the share of that class's tokens dropped before the end (None: no such token)."""
        dropped = self.dropped_at >= 0  # (L, T)
        rates: dict[str, list[float | None]] = {}
        for name in TOKEN_CLASSES:
            members = torch.tensor([c == name for c in self.classes])
            count = int(members.sum())
            rates[name] = [float(dropped[layer, members].float().mean()) if count else None
                           for layer in range(self.num_layers)]
        return rates

    def class_counts(self) -> dict[str, int]:
        return {name: self.classes.count(name) for name in TOKEN_CLASSES}


def token_class(token: str, stop_words: frozenset[str]) -> str:
    """The class of one decoded token (leading spaces ignored; a blank token counts as punctuation)."""
    word = token.strip()
    if not word or all(ch in string.punctuation or not ch.isprintable() or ch.isspace() for ch in word):
        return "punctuation"
    if word.replace(",", "").replace(".", "").isdigit():
        return "number"
    if word.lower() in stop_words:
        return "stop word"
    return "other"


def _stop_words() -> frozenset[str]:
    from gensim.parsing.preprocessing import STOPWORDS  # the `data` extra: 337 English stop words

    return frozenset(STOPWORDS)


@torch.no_grad()
def explain_drops(lm: PrunedLM, token_ids: list[int]) -> DropMap:
    """Run `token_ids` (one sequence) under `lm`'s policy and record, per layer, when each token was dropped."""
    T = len(token_ids)
    ids = torch.tensor([token_ids], device=lm.device)  # (1, T)
    positions = torch.arange(T, device=lm.device)[None]
    run = run_decoder(lm.adapter, lm.policy, ids, positions, torch.ones_like(ids, dtype=torch.bool))
    causal = torch.ones(T, T, dtype=torch.bool, device=lm.device).tril()
    query = torch.arange(T, device=lm.device)[:, None].expand(T, T)  # (T, T) query index n
    dropped_at, survived = [], []
    for layer in run.layers:
        dropped = causal & ~(layer.keep_new[0] > 0.5)  # (T, T): query n no longer sees token j
        first = torch.where(dropped, query, T).min(0).values  # (T,) first query that lost token j; T: none
        dropped_at.append(torch.where(first < T, first, -1))
        survived.append(first - torch.arange(T, device=lm.device) - 1)
    stop_words = _stop_words()
    tokens = [lm.tokenizer.decode([t]) for t in token_ids]
    return DropMap(tokens, [token_class(t, stop_words) for t in tokens], torch.stack(dropped_at).cpu(),
                   torch.stack(survived).cpu())
