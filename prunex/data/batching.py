"""Tokenized examples and right-padded batches of them (numpy for the runtime, torch for the PyTorch paths)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunex.errors import PrunexError


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text ([CLS] first, [SEP] last), truncated to `max_length`."""
    if max_length < 2:
        raise PrunexError(f"max length {max_length} is too short: [CLS] and [SEP] alone take 2 tokens")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    if encoded and encoded[0][0] != tokenizer.cls_token_id:
        raise PrunexError("the tokenizer does not put a [CLS] token first; LTP keeps [CLS] at index 0")
    return encoded


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to (B, T) int64 ids and a (B, T) bool validity mask, T = the longest row."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)  # (B,)
    valid = np.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (B, T)
    ids = np.full(valid.shape, pad_id, dtype=np.int64)
    ids[valid] = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])  # row-major: rows in order
    return ids, valid


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to (B, T) input_ids and a (B, T) long attention mask, T = longest row."""
    ids, valid = pad_rows(rows, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(valid).long()


def length_sorted_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of `encoded` in batches of similar length (longest first), for evaluation with little padding."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
