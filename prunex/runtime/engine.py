"""DecoderEngine: an exported decoder graph plus its KV-cache manager; prefill rows in, decode the batch a step.

The engine knows tensors, not text: `prefill(prompts)` runs each prompt through the graph in chunks of
`prefill_chunk` tokens over a cache of its own (so a chunk attends only to what earlier chunks kept) and adds
it to the batch's cache as a new row (`PromptRun` does the same a chunk at a time, for a caller that puts
chunks between decode steps); `decode(tokens)` feeds one token per row. Every run binds the cache
buffers and preallocated outputs by pointer (IOBinding): no copy of the cache per step. ONNX Runtime's
GroupQueryAttention takes several rows of new tokens over a past only one row at a time, hence one prompt a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.format import DecoderManifest, read_manifest
from prunex.prune.attention_policy import AttentionPolicy
from prunex.prune.policy import KeepPolicy
from prunex.prune.policy_spec import PolicySpec
from prunex.runtime.policy_hook import (
    check_runtime_policy,
    evict_over_budget,
    expire_windows,
    observe_attention,
    policy_fields,
    restrict_to_policy,
)
from prunex.runtime.scoring import PromptScorer
from prunex.runtime.session import make_session
from prunex.runtime.slot_cache import CacheLimits, CapacityError, KVCacheManager
from prunex.runtime.step_io import StepIO

PREFILL_CHUNK = 512  # prompt tokens a prefill run feeds


class DecoderEngine:
    """Runs the step graph of an exported decoder dir on CPU or CUDA with a managed, pruned KV cache."""

    def __init__(self, directory: str | Path, device: str = "auto", threads: int | None = None,
                 limits: CacheLimits | None = None, manifest: DecoderManifest | None = None,
                 policy: PolicySpec | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = m = manifest or read_manifest(self.directory)
        self.policy = None if policy is None else check_runtime_policy(policy, m)  # run-time window/sinks/h2o/tova
        self.session, self.device_choice = make_session(self.directory / m.model_file, device, threads)
        self.device = torch.device(self.device_choice.device)
        self.cache = self.new_cache(limits)
        self.next_positions = torch.zeros(0, dtype=torch.int64)  # (B,) logical position of each row's next token
        self.compact_every = 8  # decode steps between checks of the layers' holes (one host sync each)
        self.prefill_chunk = PREFILL_CHUNK
        self._steps = 0
        self._io: StepIO | None = None

    @property
    def rows(self) -> int:
        return self.cache.rows

    def new_cache(self, limits: CacheLimits | None = None) -> KVCacheManager:
        """An empty cache shaped for this graph."""
        m = self.manifest
        return KVCacheManager(m.num_layers, m.num_kv_heads, m.head_dim, m.interaction_dim, self.device, limits,
                              kv_dtype=getattr(torch, m.kv_cache), guard=m.guard if m.interaction_dim else None,
                              max_width=m.max_positions,
                              policy_fields=policy_fields(self.policy) + (("positions",) if any(m.windows) else ()))

    def _run(self, cache: KVCacheManager, io: StepIO, token_ids: Tensor, positions: Tensor) -> None:
        """One graph run of io.rows x io.seq tokens over `cache`, which takes the new entries."""
        cache.reserve(io.seq)  # may compact or grow the buffers, or raise CapacityError before anything changed
        io.bind_cache(cache)
        io.token_ids.copy_(token_ids)
        io.positions.copy_(positions)
        cache.begin_step(io.positions)
        attention_policy = self.policy if isinstance(self.policy, AttentionPolicy) else None
        if attention_policy is not None and io.seq == 1:  # the budget holds from the first decode step on
            evict_over_budget(attention_policy, cache, io.positions[:, 0])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # torch's writes to the buffers land before ORT's stream reads them
        self.session.run_with_iobinding(io.binder.binding)
        cache.end_step(io.keep, io.new_kint)
        if any(self.manifest.windows):
            expire_windows(self.manifest.windows, cache, io.positions[:, -1])
        if attention_policy is not None:
            observe_attention(attention_policy, cache, io.attention)

    # --- prefill -----------------------------------------------------------------------------------------
    def _check_prompts(self, prompts: list[list[int]]) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PrunexError("every prompt needs at least one token")
        limit = self.manifest.max_positions
        longest = max(len(p) for p in prompts)
        if limit and longest >= limit:
            raise PrunexError(f"a prompt of {longest} tokens does not fit the model's context of {limit}")

    def prompt_run(self, prompt: list[int], score_top: int | None = None, all_logits: bool = False) -> PromptRun:
        """A run of one prompt over a cache of its own, fed a chunk at a time by `PromptRun.advance`."""
        self._check_prompts([prompt])
        return PromptRun(self, prompt, score_top, all_logits)

    def run_prompt(self, prompt: list[int], all_logits: bool = False) -> tuple[np.ndarray, KVCacheManager]:
        """Run one prompt in chunks over a cache of its own; returns the logits of its last token (vocab,), or
        of every token (T, vocab) with all_logits, and that cache (one row). The batch's cache is not touched."""
        run = self.prompt_run(prompt, all_logits=all_logits).finish()
        return (np.concatenate(run.logits) if all_logits else run.next_logits), run.cache

    def run_prompts(self, prompts: list[list[int]], all_logits: bool = False) -> tuple[np.ndarray, list]:
        """`run_prompt` for each prompt; logits (N, vocab), or (N, T, vocab) zero-padded with all_logits, and
        the prompts' caches."""
        runs = self._run_all(prompts, all_logits)
        return self._stacked_logits(runs, all_logits), [run.cache for run in runs]

    def _run_all(self, prompts: list[list[int]], all_logits: bool) -> list[PromptRun]:
        self._check_prompts(prompts)
        return [self.prompt_run(p, all_logits=all_logits).finish() for p in prompts]

    def _stacked_logits(self, runs: list[PromptRun], all_logits: bool) -> np.ndarray:
        """(N, vocab) last-token logits, or (N, T, vocab) zero-padded with all_logits."""
        if not all_logits:
            return np.stack([run.next_logits for run in runs])
        padded = np.zeros((len(runs), max(len(r.prompt) for r in runs), self.manifest.vocab_size), np.float32)
        for row, run in enumerate(runs):
            padded[row, :len(run.prompt)] = np.concatenate(run.logits)
        return padded

    def add_prompt(self, run: PromptRun) -> None:
        """A finished prompt run's cache joins the batch as a new last row; a CapacityError changes nothing."""
        if not run.done:
            raise PrunexError("the prompt run has not fed its whole prompt yet")
        self.cache.add_rows(run.cache)
        self._io = None  # the rows changed: new bindings
        self.next_positions = torch.cat([self.next_positions, torch.tensor([len(run.prompt)])])

    def prefill(self, prompts: list[list[int]], all_logits: bool = False) -> Tensor:
        """Add the prompts as new rows (after the current ones); returns their last-token logits (N, vocab), or
        with `all_logits` the logits at every position (N, T, vocab) (the cache gets the same entries)."""
        self.cache.check_rows(len(prompts))  # before the prefill's work
        runs = self._run_all(prompts, all_logits)
        rows = self.rows
        try:
            for run in runs:
                self.add_prompt(run)
        except CapacityError:
            self.remove_rows(list(range(rows)))  # all or nothing
            raise
        return torch.from_numpy(self._stacked_logits(runs, all_logits)).to(self.device)

    # --- decode ------------------------------------------------------------------------------------------
    def decode(self, token_ids: Tensor) -> Tensor:
        """Feed one token per row (B,) at each row's next logical position; returns logits (B, vocab)."""
        m, B = self.manifest, self.rows
        if token_ids.shape != (B,):
            raise PrunexError(f"decode needs one token for each of the {B} rows, got shape {tuple(token_ids.shape)}")
        if m.max_positions and int(self.next_positions.max()) >= m.max_positions:
            raise CapacityError(f"a row reached the model's context of {m.max_positions} tokens")
        if self._io is None or self._io.rows != B:
            self._io = StepIO(self.session, m, B, 1, 1, self.device)
        if isinstance(self.policy, KeepPolicy):
            restrict_to_policy(self.policy, self.cache, self.next_positions)
        self._run(self.cache, self._io, token_ids.view(B, 1), self.next_positions.view(B, 1))
        self.next_positions += 1
        self._steps += 1
        if self._steps % self.compact_every == 0:
            self.cache.compact_sparse_layers()
        return self._io.logits[:, 0].clone()

    def remove_rows(self, keep: list[int]) -> None:
        """Keep only the rows in `keep` (indices, in order); the others leave the cache."""
        index = torch.tensor(keep, dtype=torch.int64)
        self.cache.remove_rows(index)
        self._io = None  # the rows changed: new bindings
        self.next_positions = self.next_positions.index_select(0, index)


class PromptRun:
    """One prompt fed through the graph `engine.prefill_chunk` tokens at a time over a one-row cache of its own,
    so a caller can put its chunks between decode steps (a long prompt then delays running rows by one chunk, not
    by its whole prefill). Between chunks the cache is compacted: the next chunk attends only to what the
    pruning kept, and memory stays bounded by the kept entries plus one chunk.

        run = engine.prompt_run(prompt_ids, score_top=5)
        while not run.done:
            run.advance()            # one chunk
        engine.add_prompt(run)       # its cache becomes the batch's next row; run.next_logits: (vocab,)
    """

    def __init__(self, engine: DecoderEngine, prompt: list[int], score_top: int | None = None,
                 all_logits: bool = False) -> None:
        self.engine, self.prompt = engine, list(prompt)
        limits = CacheLimits(max_rows=1, headroom=0, max_bytes=engine.cache.limits.max_bytes)
        self.cache = engine.new_cache(limits)
        self.cache.start(1, min(len(prompt), engine.prefill_chunk))
        self.fed = 0  # prompt tokens run so far
        self.scorer = None if score_top is None else PromptScorer(self.prompt, score_top)
        self.logits: list[np.ndarray] | None = [] if all_logits else None  # chunks of (S, vocab), all_logits
        self.next_logits: np.ndarray | None = None  # (vocab,) after the last token, once done

    @property
    def done(self) -> bool:
        return self.fed == len(self.prompt)

    def advance(self) -> int:
        """Run the next chunk; returns how many prompt tokens it fed."""
        engine, start = self.engine, self.fed
        chunk = torch.tensor(self.prompt[start:start + engine.prefill_chunk], dtype=torch.int64)[None]  # (1, S)
        S = chunk.shape[1]
        last = start + S == len(self.prompt)
        wanted = S if self.scorer is not None or self.logits is not None else 1
        io = StepIO(engine.session, engine.manifest, 1, S, wanted, engine.device)
        engine._run(self.cache, io, chunk, torch.arange(start, start + S)[None])
        logits = io.logits[0].cpu().numpy()  # (wanted, vocab): this run's own buffer
        if self.scorer is not None:
            self.scorer.add(logits)
        if self.logits is not None:
            self.logits.append(logits)
        if last:
            self.next_logits = logits[-1].copy()
        else:
            self.cache.compact_sparse_layers()  # the next chunk attends only to what this one kept
        self.fed += S
        return S

    def finish(self) -> PromptRun:
        """Run every chunk left; returns self."""
        while not self.done:
            self.advance()
        return self
