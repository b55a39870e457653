"""DecoderEngine: an exported decoder graph plus its KV-cache manager; prefill rows in, decode the batch a step.

The engine knows tensors, not text: `prefill(prompts)` runs the prompts (right-padded) through the graph with
an empty past and adds them to the cache as new rows; `decode(tokens)` feeds one token per row. Decode steps
bind the cache buffers and preallocated outputs by pointer (IOBinding): no copy of the cache per step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunex.data.batching import pad_rows
from prunex.errors import PrunexError
from prunex.format import CACHE_FIELDS, DecoderManifest, read_manifest
from prunex.prune.policy import KeepPolicy
from prunex.runtime.kv_cache import CacheLimits, CapacityError, KVCacheManager
from prunex.runtime.policy_hook import check_runtime_policy, restrict_to_policy
from prunex.runtime.session import make_session
from prunex.runtime.step_io import DecodeIO


def prompt_feeds(manifest: DecoderManifest, prompts: list[list[int]], all_logits: bool = False,
                 graph_inputs: set[str] | None = None) -> dict[str, np.ndarray]:
    """Graph feeds for right-padded prompts with an empty past: logits wanted at the last real token of each
    row, or at every position with `all_logits`. Only names in `graph_inputs` are fed (None: all)."""
    m = manifest
    ids, valid = pad_rows(prompts)  # (N, T) each
    N, T = ids.shape
    lengths = valid.sum(-1)  # (N,)
    positions = np.broadcast_to(np.arange(T, dtype=np.int64), (N, T))
    wanted = positions if all_logits else (lengths - 1)[:, None]
    feeds = {
        m.inputs["input_ids"]: ids, m.inputs["position_ids"]: positions.copy(),
        m.inputs["input_valid"]: valid,
        m.inputs["logit_index"]: np.ascontiguousarray(wanted),
    }
    D, KV, R = m.head_dim, m.num_kv_heads, m.interaction_dim
    empty = {"key": np.zeros((N, KV, 0, D), np.float32), "value": np.zeros((N, KV, 0, D), np.float32),
             "kint": np.zeros((N, 0, R), np.float32), "valid": np.zeros((N, 0), bool),
             "positions": np.zeros((N, 0), np.int64)}
    for layer in range(m.num_layers):
        for f in CACHE_FIELDS:
            feeds[m.name(m.past[f], layer)] = empty[f]
    return {name: value for name, value in feeds.items() if graph_inputs is None or name in graph_inputs}


class DecoderEngine:
    """Runs the step graph of an exported decoder dir on CPU or CUDA with a managed, pruned KV cache."""

    def __init__(self, directory: str | Path, device: str = "auto", threads: int | None = None,
                 limits: CacheLimits | None = None, manifest: DecoderManifest | None = None,
                 policy: KeepPolicy | None = None) -> None:
        self.directory = Path(directory)
        self.policy = None if policy is None else check_runtime_policy(policy)  # run-time policy (window, sinks)
        self.manifest = m = manifest or read_manifest(self.directory)
        self.session, self.device_choice = make_session(self.directory / m.model_file, device, threads)
        self.device = torch.device(self.device_choice.device)
        self.cache = KVCacheManager(m.num_layers, m.num_kv_heads, m.head_dim, m.interaction_dim, self.device, limits)
        self.next_positions = torch.zeros(0, dtype=torch.int64)  # (B,) logical position of each row's next token
        self.compact_every = 8  # decode steps between checks of the layers' load (one host sync each)
        self._outputs = m.output_names()
        # A dense graph does not read past_kint / past_pos: the exporter drops inputs nothing uses.
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._steps = 0
        self._io: DecodeIO | None = None

    @property
    def rows(self) -> int:
        return self.cache.rows

    # --- prefill -----------------------------------------------------------------------------------------
    def _check_prompts(self, prompts: list[list[int]]) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PrunexError("every prompt needs at least one token")
        limit = self.manifest.max_positions
        longest = max(len(p) for p in prompts)
        if limit and longest >= limit:
            raise PrunexError(f"a prompt of {longest} tokens does not fit the model's context of {limit}")

    def run_prompts(self, prompts: list[list[int]], all_logits: bool = False) -> tuple[np.ndarray, list]:
        """Run prompts with an empty past; returns logits ((N, vocab) last tokens, or (N, T, vocab) with
        all_logits) and the packed new entries per layer, without touching the cache."""
        self._check_prompts(prompts)
        feeds = prompt_feeds(self.manifest, prompts, all_logits, self._inputs)
        outputs = self.session.run(self._outputs, feeds)
        logits = outputs[0] if all_logits else outputs[0][:, 0]
        per_layer = 1 + len(CACHE_FIELDS)
        new = [dict(zip(CACHE_FIELDS, outputs[2 + per_layer * layer: 1 + per_layer * (layer + 1)]))
               for layer in range(self.manifest.num_layers)]
        return logits, new

    def prefill(self, prompts: list[list[int]], all_logits: bool = False) -> Tensor:
        """Add the prompts as new rows (after the current ones); returns their last-token logits (N, vocab), or
        with `all_logits` the logits at every position (N, T, vocab) (the cache gets the same entries)."""
        self.cache.check_rows(len(prompts))  # before the prefill's work
        logits, new = self.run_prompts(prompts, all_logits)
        entries = [{f: torch.from_numpy(layer[f]) for f in CACHE_FIELDS} for layer in new]
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
        self.cache.add_rows(entries, lengths)
        self._io = None  # the rows changed: new bindings
        self.next_positions = torch.cat([self.next_positions, lengths])
        return torch.from_numpy(logits).to(self.device)

    # --- decode ------------------------------------------------------------------------------------------
    def decode(self, token_ids: Tensor) -> Tensor:
        """Feed one token per row (B,) at each row's next logical position; returns logits (B, vocab)."""
        m, B = self.manifest, self.rows
        if token_ids.shape != (B,):
            raise PrunexError(f"decode needs one token for each of the {B} rows, got shape {tuple(token_ids.shape)}")
        if m.max_positions and int(self.next_positions.max()) >= m.max_positions:
            raise CapacityError(f"a row reached the model's context of {m.max_positions} tokens")
        if self._io is None or self._io.rows != B:
            self._io = DecodeIO(self.session, m, B, self.device, self._inputs)
        io = self._io
        if self.policy is not None:
            restrict_to_policy(self.policy, self.cache, self.next_positions)  # before the free slots are picked
        self.cache.reserve()  # picks each row's free slot; may rebuild full layers or raise CapacityError
        io.token_ids.copy_(token_ids.view(B, 1))
        io.positions.copy_(self.next_positions.view(B, 1))
        io.bind_cache(self.cache)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # torch's writes to the buffers land before ORT's stream reads them
        self.session.run_with_iobinding(io.binder.binding)
        for layer in range(m.num_layers):
            self.cache.apply_step(layer, io.keep[layer], io.new[layer])
        self.cache.count_step()
        self.next_positions += 1
        self._steps += 1
        if self._steps % self.compact_every == 0:
            self.cache.compact_sparse_layers()
        return io.logits[:, 0].clone()

    def remove_rows(self, keep: list[int]) -> None:
        """Keep only the rows in `keep` (indices, in order); the others leave the cache."""
        index = torch.tensor(keep, dtype=torch.int64)
        self.cache.remove_rows(index)
        self._io = None  # the rows changed: new bindings
        self.next_positions = self.next_positions.index_select(0, index)
