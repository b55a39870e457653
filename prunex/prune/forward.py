"""Whole sequences through the decoder loop (training, evaluation, prefill), with the pruning counted.

Sequences are right-padded; `valid` marks real tokens. Soft decisions (alpha < inf) for training, hard ones
(alpha = inf) for evaluation; see `prunex.prune.decoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunex.models.adapters import DecoderAdapter
from prunex.prune.decoder import run_decoder
from prunex.prune.policy import PruningPolicy
from prunex.tensors import repeat_rows


@dataclass
class LayerPrefill:
    """What one layer leaves for the step-wise cache after a prompt."""

    k: Tensor  # (B, KV, T, D) keys, positions applied ((R, 1, T, D) per head: see `prunex.prune.scorer`)
    v: Tensor  # (B, KV, T, D)
    state: Tensor | None  # (B, T, r) policy state (DCP: k_int)
    keep_last: Tensor  # (B, T) bool: still cached after each row's last prompt token ((R, T) per head)


@dataclass
class ForwardResult:
    logits: Tensor  # (B, T, vocab)
    kept_entries: Tensor  # () sum over layers of kept causal (query, key) pairs among real tokens
    causal_entries: Tensor  # () sum over layers of all causal pairs among real tokens
    mean_keep: Tensor  # () differentiable mean keep probability over layers and causal pairs
    prefill: list[LayerPrefill] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """1 - sparsity: the fraction of causal key/value entries kept."""
        return float(self.kept_entries / self.causal_entries)


def run_full(
    adapter: DecoderAdapter,
    policy: PruningPolicy | None,
    input_ids: Tensor,
    valid: Tensor | None = None,
    alpha: float = math.inf,
    collect_prefill: bool = False,
) -> ForwardResult:
    """Forward (B, T) right-padded ids; `policy=None` is the dense model. alpha = inf: hard decisions."""
    B, T = input_ids.shape
    device = input_ids.device
    valid = torch.ones(B, T, dtype=torch.bool, device=device) if valid is None else valid.bool()
    positions = torch.arange(T, device=device).expand(B, T)  # (B, T) logical positions
    run = run_decoder(adapter, policy, input_ids, positions, valid, alpha=alpha)
    counted = valid[:, :, None] & valid[:, None, :] & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    last = valid.sum(-1) - 1  # (B,) index of each row's last real token
    kept = torch.zeros((), device=device)
    mean_keep = torch.zeros((), device=device)
    prefill: list[LayerPrefill] = []
    for layer in run.layers:
        heads = layer.keep_new.shape[0] // B  # K/V heads folded into the rows by a per-head policy, else 1
        pairs = repeat_rows(counted, heads)  # (R, T, T)
        keep = layer.keep_new.to(run.hidden.dtype) * pairs  # (R, T, T) pairs between real tokens
        kept = kept + keep.sum().detach() / heads  # a layer's share: the mean over its heads
        mean_keep = mean_keep + keep.sum() / pairs.sum()
        if collect_prefill:
            rows = torch.arange(B * heads, device=device)
            keep_last = layer.keep_new[rows, repeat_rows(last, heads)] > 0.5  # (R, T)
            prefill.append(LayerPrefill(layer.k, layer.v, layer.state, keep_last & repeat_rows(valid, heads)))
    return ForwardResult(
        logits=adapter.logits(run.hidden),
        kept_entries=kept,
        causal_entries=counted.sum() * adapter.num_layers,
        mean_keep=mean_keep / adapter.num_layers,
        prefill=prefill,
    )
