"""A plain greedy loop over an exported decoder dir with ONNX Runtime (io names from the manifest only).

The cache lives in numpy arrays between steps: each step feeds the previous step's present_* outputs back as
past_* inputs; compaction happens inside the graph (prunex::KVCompact), so the host never compacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunex.errors import PrunexError
from prunex.export.manifest import CACHE_FIELDS, DecoderManifest, read_manifest
from prunex.prune.lm import GenerationResult


def make_session(model_path: str | Path, threads: int | None = None):
    """A CPU InferenceSession; threads = intra-op threads (None: as many as torch uses)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()  # follow torch's setting by default
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


Cache = list[dict[str, np.ndarray]]  # per layer: key, value, kint, valid, positions


class OnnxDecoder:
    """An exported decoder step graph: prefill and decode calls with a numpy cache."""

    def __init__(self, directory: str | Path, threads: int | None = None,
                 manifest: DecoderManifest | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory)
        self.session = make_session(self.directory / self.manifest.model_file, threads)
        m = self.manifest
        self._present_names = [
            m.name(m.present[f], layer) for layer in range(m.num_layers) for f in CACHE_FIELDS
        ]

    def empty_cache(self, batch: int) -> Cache:
        """An empty past (P = 0) for `batch` rows."""
        m = self.manifest
        D, KV, R = m.head_dim, m.num_kv_heads, m.interaction_dim
        empty = {
            "key": np.zeros((batch, KV, 0, D), np.float32), "value": np.zeros((batch, KV, 0, D), np.float32),
            "kint": np.zeros((batch, 0, R), np.float32), "valid": np.zeros((batch, 0), bool),
            "positions": np.zeros((batch, 0), np.int64),
        }
        return [dict(empty) for _ in range(m.num_layers)]

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, input_valid: np.ndarray,
            cache: Cache) -> tuple[np.ndarray, Cache]:
        """One graph call: (B, S) ids/positions/validity + cache -> logits (B, S, vocab), compacted cache."""
        m = self.manifest
        feeds = {
            m.inputs["input_ids"]: input_ids.astype(np.int64),
            m.inputs["position_ids"]: position_ids.astype(np.int64),
            m.inputs["input_valid"]: input_valid.astype(bool),
        }
        for layer, held in enumerate(cache):
            for f in CACHE_FIELDS:
                feeds[m.name(m.past[f], layer)] = held[f]
        outputs = self.session.run([m.logits, *self._present_names], feeds)
        presents = outputs[1:]
        n = len(CACHE_FIELDS)
        new_cache = [dict(zip(CACHE_FIELDS, presents[n * layer: n * (layer + 1)])) for layer in range(m.num_layers)]
        return outputs[0], new_cache

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, Cache, np.ndarray]:
        """Right-padded prompts -> last-token logits (B, vocab), cache, lengths (B,)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PrunexError("every prompt needs at least one token")
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)  # (B,)
        B, T = len(prompts), int(lengths.max())
        input_ids = np.zeros((B, T), np.int64)
        for row, prompt in enumerate(prompts):
            input_ids[row, : len(prompt)] = prompt
        valid = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
        positions = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))
        logits, cache = self.run(input_ids, positions, valid, self.empty_cache(B))
        return logits[np.arange(B), lengths - 1], cache, lengths

    def step(self, token_ids: np.ndarray, positions: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
        """One token per row (B,) at logical positions (B,) -> logits (B, vocab), cache."""
        B = token_ids.shape[0]
        logits, cache = self.run(token_ids[:, None], positions[:, None], np.ones((B, 1), bool), cache)
        return logits[:, 0], cache

    def held_entries(self, cache: Cache) -> np.ndarray:
        """(B,) entries held per row, summed over layers."""
        return sum(held["valid"].sum(-1) for held in cache)

    def nbytes(self, cache: Cache) -> int:
        """Bytes of K/V and interaction keys held by the valid entries (as PrunedKVCache.nbytes)."""
        m = self.manifest
        per_token = (2 * m.num_kv_heads * m.head_dim + m.interaction_dim) * 4
        return int(self.held_entries(cache).sum()) * per_token


def generate(
    model: OnnxDecoder | str | Path,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    eos_token_id: int | None = None,
    threads: int | None = None,
) -> GenerationResult:
    """Greedy generation through ONNX Runtime; the same fields and rules as `PrunedLM.generate`."""
    decoder = model if isinstance(model, OnnxDecoder) else OnnxDecoder(model, threads)
    if max_new_tokens < 1:
        raise PrunexError("max_new_tokens must be at least 1")
    m = decoder.manifest
    if m.max_positions and max(len(p) for p in prompts) + max_new_tokens > m.max_positions:
        raise PrunexError(f"prompt + --max-new-tokens exceed the model's context of {m.max_positions}")
    logits, cache, positions = decoder.prefill(prompts)
    B = len(prompts)
    new_tokens: list[list[int]] = [[] for _ in range(B)]
    finished = np.zeros(B, dtype=bool)
    for step in range(max_new_tokens):
        next_ids = logits.argmax(-1)  # (B,)
        for row in np.flatnonzero(~finished):
            new_tokens[row].append(int(next_ids[row]))
        if eos_token_id is not None:
            finished |= next_ids == eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        logits, cache = decoder.step(next_ids, positions, cache)
        positions = positions + 1
    held = decoder.held_entries(cache)  # (B,)
    dense = positions * m.num_layers
    kv_bytes = decoder.nbytes(cache)
    return GenerationResult(
        token_ids=new_tokens,
        # float32 division, as PrunedLM.generate's torch integer division, so both report the same number
        kv_kept_fraction=float(np.float32(held.sum()) / np.float32(dense.sum())),
        kv_bytes=kv_bytes,
        dense_kv_bytes=int(kv_bytes * float(dense.sum() / max(int(held.sum()), 1))),
    )


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside an exported model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise PrunexError(f"no usable tokenizer files in {directory}: {err}") from err
