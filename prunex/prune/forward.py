"""The full-sequence forward of a decoder under a keep policy (training, evaluation, prefill).

Soft decisions (alpha < inf) enter attention as log(keep) added to the logits, as in DCP; hard decisions
(alpha = inf) as a boolean mask. Sequences are right-padded; `valid` marks real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prunex.models.adapters import DecoderAdapter
from prunex.prune.policy import KeepPolicy


@dataclass
class LayerPrefill:
    """What one layer leaves for the step-wise cache after a prompt."""

    k: Tensor  # (B, KV, T, D) keys, positions applied
    v: Tensor  # (B, KV, T, D)
    state: Tensor | None  # (B, T, r) policy state (DCP: k_int)
    keep_last: Tensor  # (B, T) bool: still cached after each row's last prompt token


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
    policy: KeepPolicy | None,
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
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T) key j <= query n
    allowed = causal & valid[:, None, :]  # (B, T, T)
    counted = allowed & valid[:, :, None]  # pairs between real tokens
    last = valid.sum(-1) - 1  # (B,) index of each row's last real token

    hidden = adapter.embed(input_ids, positions)  # (B, T, d)
    rope = adapter.position_context(hidden, positions)
    kept = torch.zeros((), device=device)
    mean_keep = torch.zeros((), device=device)
    prefill: list[LayerPrefill] = []
    for layer in range(adapter.num_layers):
        x = adapter.attention_input(layer, hidden)
        q, k, v = adapter.qkv(layer, x, rope)  # (B, H, T, D), (B, KV, T, D) x2
        state = None
        if policy is None:
            keep = allowed.to(x.dtype)
            mask: Tensor = allowed
        else:
            keep, state = policy.full(layer, x, positions, alpha)  # (B, T, T)
            keep = keep * allowed
            if math.isinf(alpha):
                mask = keep > 0.5
            else:
                mask = torch.where(allowed, keep.clamp_min(1e-30).log(), torch.full_like(keep, -math.inf))
        kept = kept + (keep * counted).sum().detach()
        mean_keep = mean_keep + (keep * counted).sum() / counted.sum()
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], scale=adapter.attention_scale(layer), enable_gqa=True
        )  # (B, H, T, D)
        hidden = hidden + adapter.attention_output(layer, attended.transpose(1, 2).reshape(B, T, -1))
        hidden = adapter.mlp_block(layer, hidden)
        if collect_prefill:
            keep_last = keep[torch.arange(B, device=device), last] > 0.5  # (B, T)
            prefill.append(LayerPrefill(k, v, state, keep_last & valid))
    return ForwardResult(
        logits=adapter.logits(hidden),
        kept_entries=kept,
        causal_entries=counted.sum() * adapter.num_layers,
        mean_keep=mean_keep / adapter.num_layers,
        prefill=prefill,
    )
