"""Calibration feeds for static quantization, from real text: the packaged sources or a user's file."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FeedReader:
    """An onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def prompt_feeds(manifest, prompt: list[int]) -> dict[str, np.ndarray]:
    """Feeds of one prompt's run over an empty cache of exactly its length (what the runtime's first prefill
    chunk sees: every slot one of the new entries)."""
    m, T = manifest, len(prompt)
    positions = np.arange(T, dtype=np.int64)
    empty = {
        "key": np.zeros((1, m.num_kv_heads, T, m.head_dim), np.float32),
        "value": np.zeros((1, m.num_kv_heads, T, m.head_dim), np.float32),
        "kint": np.zeros((1, m.interaction_dim, T), np.float32), "valid": np.ones((1, 1, T), bool),
        "guard": m.guard(positions)[None, None], "seqlens": np.array([T - 1], np.int32),
        "capacity": np.array(T, np.int32),
    }
    feeds = {m.inputs["input_ids"]: np.array([prompt], np.int64), m.inputs["position_ids"]: positions[None],
             m.inputs["logit_index"]: np.array([[T - 1]], np.int64)}
    for layer in range(m.num_layers):
        feeds.update({m.name(m.past[f], layer): empty[f] for f in m.past_fields()})
    return feeds


def decoder_feeds(directory: Path, text: str = "wikipedia", samples: int = 8, length: int = 256) -> list[dict]:
    """Prompt feeds (`prompt_feeds`) of `samples` windows of `length` tokens from the training split of `text`
    (a packaged source or a UTF-8 file), so the held-out split stays unseen."""
    from prunex.data.text import split_text, token_windows
    from prunex.format import read_manifest
    from prunex.runtime.runtime import load_tokenizer

    manifest = read_manifest(directory)
    windows = token_windows(load_tokenizer(directory), split_text(text, "train"), length, samples)
    return [prompt_feeds(manifest, w.tolist()) for w in windows]


def encoder_feeds(directory: Path, task: str, samples: int = 32, batch: int = 8) -> list[dict]:
    """Feeds of `samples` training texts of `task`, `batch` per feed."""
    from prunex.data.batching import encode_texts, pad_batch
    from prunex.data.labelled import split_labelled
    from prunex.format import read_encoder_manifest
    from prunex.runtime.runtime import load_tokenizer

    manifest = read_encoder_manifest(directory)
    tokenizer = load_tokenizer(directory)
    texts = list(split_labelled(task, "train").texts[:samples])
    feeds = []
    for start in range(0, len(texts), batch):
        encoded = encode_texts(tokenizer, texts[start: start + batch], manifest.max_length)
        ids, mask = pad_batch(encoded, tokenizer.pad_token_id or 0)
        feeds.append({manifest.inputs["input_ids"]: ids.numpy(), manifest.inputs["attention_mask"]: mask.numpy()})
    return feeds
