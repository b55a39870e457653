"""The layer loop of an encoder classifier under token pruning, with real removal of tokens.

Modes:
- `dense`: no pruning (the plain classifier).
- `soft`: every token stays; after each layer its output is multiplied by the pruner's soft mask (training).
  `kept` and `flops` are what the hard decisions (mask > 0.5, a removed token staying removed) would give:
  an estimate of the pruned cost that costs nothing to compute.
- `hard`: tokens below the pruner's decision are removed physically: the kept tokens of each row are packed
  in their original order (`pack_kept`), rows keep their own lengths in a (B, W) layout with a new validity
  mask, and later layers run on W <= n tokens. This is what inference runs.
- `masked`: the same decisions as `hard`, but every tensor keeps its full length and removed tokens are only
  excluded through the attention mask (as a key and from the importance rows). A static-shape reference:
  `hard` and `masked` give the same logits.

Where a token is removed: the decision of layer l comes from layer l's attention probabilities, so it is known
before the attended values are computed. A removed token's attention output, out projection and FFN at layer
l would only feed its own (discarded) output, so `hard` skips them: layer l runs Q/K/V and the scores on the
n_in tokens it receives and everything after on the n_out tokens it keeps. The result is the same as removing
the token from layer l's output ("between layers"), at lower cost.

`dense` needs no attention probabilities, so it runs PyTorch's fused attention (`scaled_dot_product_attention`),
without the attention-probability dropout of training: on CPU that dropout forces the unfused kernel, 6x slower
on 512-token inputs (the hidden-state dropout stays). The pruning modes need the probabilities (importance).

Padding and removed keys are masked with an additive (B, 1, 1, n) bias of 0 / -inf: broadcast in one Add,
where a boolean mask costs the exported graph a Where over the full (B, H, n, n) scores.

Rules: the [CLS] token (index 0 of every row) and the pruner's floor of tokens are never removed; padding is
never a key, never counted in the importance and never kept. B batch, T input tokens, n tokens at a layer,
W packed width, d hidden, H heads, D head dim, C labels, L layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.encoder_adapters import EncoderAdapter
from prunex.tensors import gather_tokens, pack_kept

MODES = ("dense", "soft", "hard", "masked")


class TokenPruner(Protocol):
    """What a token-pruning method provides to the layer loop (see `prunex.prune.ltp.LTPThresholds`)."""

    def score(self, layer: int, probs: Tensor, alive: Tensor) -> Tensor:
        """(B, H, n, n) attention probabilities, (B, n) bool present tokens -> (B, n) importance."""

    def protected(self, layer: int, scores: Tensor, alive: Tensor) -> Tensor:
        """(B, n) importance, (B, n) bool present -> (B, n) bool never removed ([CLS] and a floor of tokens)."""

    def soft_mask(self, layer: int, scores: Tensor) -> Tensor:
        """(B, n) importance -> (B, n) keep weight in (0, 1), differentiable."""

    def threshold(self, layer: int) -> Tensor:
        """() the hard decision's threshold: a token stays iff its importance is above it (or it is protected)."""


@dataclass
class EncoderResult:
    logits: Tensor  # (B, C)
    lengths: Tensor  # (B,) real input tokens per row
    kept: Tensor  # (B, L) tokens of each row still present after each layer (soft: as hard decisions would)
    flops: Tensor  # (B,) float64 FLOPs (2 x multiply-adds) of the layers, as run (soft: as hard would run), per row
    mask_loss: Tensor  # () soft mode: sum over layers of the mean soft mask over real tokens; else 0
    positions: Tensor  # (B, W) original positions of the tokens left after the last layer (-1: none)


def layer_flops(d: int, d_ff: int, n_in: Tensor, n_out: Tensor) -> Tensor:
    """FLOPs of one post-norm encoder layer that receives n_in tokens and keeps n_out (per row, float64).

    Q/K/V projections 3*n_in*d^2, scores n_in^2*d, attended values n_out*n_in*d, out projection n_out*d^2,
    FFN 2*n_out*d*d_ff multiply-adds, times 2. With n_in = n_out = n this is 2*(4nd^2 + 2n^2 d + 2n d d_ff).
    """
    n_in, n_out = n_in.to(torch.float64), n_out.to(torch.float64)
    macs = 3 * n_in * d * d + n_in * n_in * d + n_out * n_in * d + n_out * d * d + 2 * n_out * d * d_ff
    return 2 * macs


def dense_flops(adapter: EncoderAdapter, lengths: Tensor) -> Tensor:
    """(B,) FLOPs of the dense encoder on rows of `lengths` real tokens."""
    per_layer = layer_flops(adapter.hidden_size, adapter.intermediate_size, lengths, lengths)
    return per_layer * adapter.num_layers


def threshold_gather(hidden: Tensor, scores: Tensor, threshold: Tensor, alive: Tensor,
                     keep_always: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LTP removal: a present token stays iff its score is above `threshold` or it is in `keep_always`.

    hidden (B, n, d), scores (B, n), threshold (), alive and keep_always (B, n) bool. Returns the kept hidden
    states packed in order (B, W, d), their validity (B, W) and their indices (B, W) into n. The PyTorch twin
    of `prunex::ThresholdGather` (the export passes `torch.ops.prunex.threshold_gather` instead).
    """
    stay = ((scores > threshold) | keep_always) & alive  # (B, n)
    index, valid = pack_kept(stay)  # (B, W)
    return gather_tokens(hidden, index, 1), valid, index


def _merge_heads(per_head: Tensor) -> Tensor:
    """(B, H, m, D) -> (B, m, H * D)."""
    return per_head.transpose(1, 2).flatten(2)


# (hidden, scores, threshold, alive, keep_always) -> (hidden kept, valid, index), as `threshold_gather`
TokenGather = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def _checked_valid(adapter: EncoderAdapter, input_ids: Tensor, attention_mask: Tensor | None,
                   pruner: TokenPruner | None, mode: str) -> Tensor:
    """The (B, T) bool mask of real tokens, after refusing what the loop cannot run."""
    if mode not in MODES:
        raise PrunexError(f"unknown pruning mode {mode!r}; use one of {MODES}")
    if mode != "dense" and pruner is None:
        raise PrunexError(f"mode {mode!r} needs a pruner (thresholds)")
    B, T = input_ids.shape
    valid = (torch.ones(B, T, dtype=torch.bool, device=input_ids.device) if attention_mask is None
             else attention_mask.bool())
    if not bool(valid[:, 0].all()):
        raise PrunexError("every row needs a real first token ([CLS]): pad on the right")
    if T > adapter.max_length:
        raise PrunexError(f"{T} tokens exceed the encoder's {adapter.max_length} positions: truncate the inputs")
    return valid


def run_encoder(
    adapter: EncoderAdapter,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    pruner: TokenPruner | None = None,
    mode: str = "dense",
    gather: TokenGather = threshold_gather,
) -> EncoderResult:
    """Classify (B, T) right-padded ids, each row starting with [CLS]; see the module doc for `mode`.
    `gather` removes the tokens in hard mode (the export passes the prunex op)."""
    valid = _checked_valid(adapter, input_ids, attention_mask, pruner, mode)  # (B, T)
    B, T = input_ids.shape
    device = input_ids.device
    d = adapter.hidden_size
    lengths = valid.sum(-1)  # (B,)
    soft_alive = valid  # (B, T) soft mode: tokens that hard decisions would still have

    hidden = adapter.embed(input_ids)  # (B, T, d)
    alive = valid  # (B, n) tokens present at this layer
    positions = torch.arange(T, device=device).expand(B, T)  # (B, n) original positions
    kept, flops = [], torch.zeros(B, dtype=torch.float64, device=device)
    mask_loss = hidden.new_zeros(())
    for layer in range(adapter.num_layers):
        q, k, v = adapter.qkv(layer, hidden)  # (B, H, n, D) each
        residual, alive_next = hidden, alive
        key_bias = q.new_zeros(alive.shape).masked_fill(~alive, float("-inf"))[:, None, None, :]  # (B, 1, 1, n)
        if mode == "dense":
            attended = _merge_heads(F.scaled_dot_product_attention(
                q, k, v, attn_mask=key_bias, scale=adapter.attention_scale(layer)))  # (B, n, d)
        else:
            scores = (q @ k.transpose(-1, -2)) * adapter.attention_scale(layer)  # (B, H, n, n)
            probs = (scores + key_bias).softmax(-1)  # (B, H, n, n)
            dropped_probs = adapter.attention_dropout(layer, probs)
            importance = pruner.score(layer, probs, alive)  # (B, n)
            protected = pruner.protected(layer, importance, alive)  # (B, n) [CLS] first, plus the floor
            attended = _merge_heads(dropped_probs @ v)  # (B, n, d)
            if mode == "hard":
                residual, alive_next, index = gather(hidden, importance, pruner.threshold(layer), alive,
                                                     protected)  # (B, W, d), (B, W), (B, W)
                # only the kept queries go on: their rows of the attended values (a (B, W, d) gather costs
                # far less than gathering the (B, H, W, n) probabilities before the product)
                attended = gather_tokens(attended, index, 1)  # (B, W, d)
                positions = torch.where(alive_next, positions.gather(1, index), -1)  # (B, W)
            elif mode == "masked":
                alive_next = ((importance > pruner.threshold(layer)) | protected) & alive  # (B, n)
        n_in, n_out = alive.sum(-1), alive_next.sum(-1)  # (B,)
        hidden = adapter.attention_block(layer, attended, residual)  # (B, m, d)
        hidden = adapter.ffn_block(layer, hidden)  # (B, m, d)
        if mode == "soft":
            soft = torch.where(protected, 1.0, pruner.soft_mask(layer, importance)) * valid  # (B, T)
            hidden = hidden * soft[..., None]
            mask_loss = mask_loss + (soft.sum() / valid.sum())
            n_in = soft_alive.sum(-1)  # (B,) what hard decisions would have left so far
            soft_alive = soft_alive & (soft > 0.5)  # (B, T)
            n_out = soft_alive.sum(-1)
        flops = flops + layer_flops(d, adapter.intermediate_size, n_in, n_out)
        alive = alive_next
        kept.append(n_out)
    if mode == "masked":
        positions = torch.where(alive, positions, -1)
    return EncoderResult(
        logits=adapter.classify(hidden),
        lengths=lengths,
        kept=torch.stack(kept, dim=1),
        flops=flops,
        mask_loss=mask_loss,
        positions=positions,
    )
