"""PrunedLM: a base causal LM plus a keep policy, with full-sequence and step-wise (cache-pruning) paths."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from prunex.data.batching import pad_batch
from prunex.errors import PrunexError
from prunex.models.adapters import decoder_adapter
from prunex.models.sources import LoadedModel
from prunex.prune.decoder import run_decoder
from prunex.prune.forward import ForwardResult, run_full
from prunex.prune.policy import PruningPolicy
from prunex.prune.pruned_cache import PrunedKVCache
from prunex.tensors import repeat_rows


@dataclass
class GenerationResult:
    token_ids: list[list[int]]  # new tokens per row (stopping at, and including, EOS)
    kv_kept_fraction: float  # K/V entries held at the end / entries a dense cache would hold
    kv_bytes: int  # bytes of K/V held at the end
    dense_kv_bytes: int  # bytes a dense cache would hold for the same tokens
    step_logits: Tensor | None = None  # (B, N, vocab) logits that chose each new token


class PrunedLM:
    """A causal LM whose K/V cache is pruned by `policy` (None: the dense base model)."""

    def __init__(self, base: LoadedModel, policy: PruningPolicy | None = None) -> None:
        self.base = base
        self.adapter = decoder_adapter(base.model)
        self.policy = policy
        self.max_positions = getattr(base.model.config, "max_position_embeddings", None) or getattr(
            base.model.config, "n_positions", None
        )

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def device(self) -> torch.device:
        """Where the base model's weights are."""
        return next(self.base.model.parameters()).device

    def to(self, device: torch.device) -> "PrunedLM":
        """Move the base model and a learned policy to `device` (forward, generate and training follow)."""
        self.base.model.to(device)
        if isinstance(self.policy, torch.nn.Module):
            self.policy.to(device)
        return self

    def forward(
        self, input_ids: Tensor, valid: Tensor | None = None, alpha: float = math.inf
    ) -> ForwardResult:
        """Full-sequence forward of right-padded (B, T) ids; alpha = inf gives hard decisions."""
        self.check_length(input_ids.shape[1])
        return run_full(self.adapter, self.policy, input_ids, valid, alpha)

    def check_length(self, length: int) -> None:
        """Refuse `length` tokens past the model's context, with a message that says what to shorten."""
        if self.max_positions and length > self.max_positions:
            raise PrunexError(
                f"{length} tokens exceed the model's context of {self.max_positions}: shorten the prompt "
                "or --max-new-tokens"
            )

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 64,
        eos_token_id: int | None = None,
        return_logits: bool = False,
    ) -> GenerationResult:
        """Greedy step-wise generation for a batch of prompts of any lengths; dropped tokens leave the cache."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PrunexError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise PrunexError("max_new_tokens must be at least 1")
        input_ids, mask = pad_batch(prompts, pad_id=0)  # (B, T) each
        B = len(prompts)
        self.check_length(input_ids.shape[1] + max_new_tokens)
        device = self.device
        input_ids, valid = input_ids.to(device), mask.bool().to(device)
        lengths = valid.sum(-1)  # (B,)

        prefill = run_full(self.adapter, self.policy, input_ids, valid, collect_prefill=True)
        cache = PrunedKVCache.from_prefill(prefill.prefill, valid)
        logits = prefill.logits[torch.arange(B, device=device), lengths - 1]  # (B, vocab)
        positions = lengths.clone()  # (B,) logical position of the next token
        new_tokens: list[list[int]] = [[] for _ in range(B)]
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        step_logits = []
        for step in range(max_new_tokens):
            next_ids = logits.argmax(-1)  # (B,)
            step_logits.append(logits)
            for row in (~finished).nonzero().flatten().tolist():
                new_tokens[row].append(int(next_ids[row]))
            if eos_token_id is not None:
                finished |= next_ids == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = self.decode_step(cache, next_ids, positions)
            positions += 1
        held = cache.held_entries()  # (B,)
        dense = positions * self.adapter.num_layers  # tokens fed so far, per layer
        kv_bytes = cache.nbytes()
        return GenerationResult(
            token_ids=new_tokens,
            kv_kept_fraction=float(held.sum() / dense.sum()),
            kv_bytes=kv_bytes,
            dense_kv_bytes=int(kv_bytes * float(dense.sum() / held.sum().clamp_min(1))),
            step_logits=torch.stack(step_logits, dim=1) if return_logits else None,
        )

    def decode_step(self, cache: PrunedKVCache, token_ids: Tensor, positions: Tensor) -> Tensor:
        """Feed one token per row (B,) at its logical position (B,); the entries the new queries drop leave
        `cache` and the new tokens join it. Returns (B, vocab) next-token logits."""
        B = token_ids.shape[0]
        valid = torch.ones(B, 1, dtype=torch.bool, device=token_ids.device)
        run = run_decoder(self.adapter, self.policy, token_ids[:, None], positions[:, None], valid, cache.layers)
        for layer, step in enumerate(run.layers):
            if step.past_state is not None:  # the policy rescored the cached entries (H2O, TOVA)
                cache.layers[layer] = replace(cache.layers[layer], state=step.past_state)
            cache.layers[layer] = cache.layers[layer].append(step.keep_past[:, -1], step.k, step.v, step.state,
                                                             repeat_rows(positions, cache.rows_per_sequence(layer)))
        return self.adapter.logits(run.hidden)[:, 0]
