"""Learned Token Pruning (Kim, Shen et al., 2021) for encoder classifiers, as torch modules.

A token's attention mass at layer l is the mean attention probability it receives, over heads and over the
query rows of the tokens present (padding excluded); it sums to 1 over a row's n present tokens, so an
average token gets 1/n. Its importance is that mass times n (`relative`, the default: 1 for an average token
whatever the row's length) or the mass itself (`absolute`, the paper's, kept for older checkpoints: with
it, thresholds trained on 30-token snippets prune a 100-token review far harder than a snippet, since all its
masses are ~3x smaller). Layer l removes the tokens whose importance falls below

    threshold_l = final_threshold * ((l + 1) / L + offset_l)

a linear base schedule plus a learned offset (init 0). The offset is kept in units of `final_threshold` so
that one learning rate suits any importance scale; the threshold itself is the reference's
`schedule + delta` with delta = final_threshold * offset. Training uses the soft mask
sigmoid((importance - threshold) / T).

A floor of `min_tokens` per row is never removed: [CLS] and the most important tokens of the layer, so a
threshold tuned on long inputs cannot strip a short one down to [CLS] alone (a row shorter than the floor
keeps every token).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunex.config import LTP_STAGES, LTPConfig
from prunex.errors import PrunexError
from prunex.models.encoder_adapters import encoder_adapter
from prunex.prune.encoder_forward import EncoderResult, run_encoder


def token_importance(probs: Tensor, alive: Tensor) -> Tensor:
    """Mean attention probability each token receives, over heads and the query rows of present tokens.

    probs: (B, H, n, n) softmax over keys, removed/padding keys already at 0; alive: (B, n) bool.
    Returns (B, n); padding and removed tokens score 0.
    """
    H = probs.shape[1]
    rows = alive.to(probs.dtype)  # (B, n)
    # summed over the present query rows as a matrix-vector product (one pass over probs; a masked multiply and
    # a two-axis ReduceSum cost ONNX Runtime 5x more on 400-token rows), then over heads
    received = (rows[:, None, None, :] @ probs).sum(dim=(1, 2))  # (B, H, 1, n) -> (B, n)
    return received / (H * rows.sum(-1, keepdim=True)) * rows


def protected_tokens(scores: Tensor, alive: Tensor, min_tokens: int) -> Tensor:
    """(B, n) bool: [CLS] (index 0) plus each row's `min_tokens - 1` most important other present tokens.

    A token's rank is the number of other present tokens that score strictly higher (ties share a rank and
    are all kept); ranks come from one (B, n, n) comparison, so the floor needs no sort and traces to ONNX.
    """
    n = scores.shape[1]
    first = torch.arange(n, device=scores.device)[None, :] == 0  # (1, n) the [CLS] column
    if min_tokens <= 1:
        return first.expand_as(alive)
    candidates = alive & ~first  # (B, n)
    ranked = scores.masked_fill(~candidates, float("-inf"))  # (B, n)
    higher = (ranked[:, None, :] > ranked[:, :, None]).sum(-1)  # (B, n) candidates scoring higher
    return first | ((higher < min_tokens - 1) & candidates)


class LTPThresholds(nn.Module):
    """Per-layer thresholds: a linear schedule plus a learned offset. Implements `TokenPruner`."""

    def __init__(self, num_layers: int, config: LTPConfig) -> None:
        super().__init__()
        if config.final_threshold is None or config.temperature is None:
            raise PrunexError("LTPThresholds needs a resolved LTPConfig (call config.resolved(mean_tokens))")
        self.config = config
        self.final_threshold = config.final_threshold
        self.temperature = config.temperature
        self.min_tokens = config.min_tokens or 0
        self.relative = config.importance == "relative"
        self.offset = nn.Parameter(torch.zeros(num_layers))  # (L,) learned, in units of final_threshold
        schedule = config.final_threshold * torch.arange(1, num_layers + 1, dtype=torch.float32) / num_layers
        self.register_buffer("schedule", schedule, persistent=False)  # (L,)

    def thresholds(self) -> Tensor:
        """(L,) the thresholds of all layers (differentiable in the offsets)."""
        return self.schedule + self.final_threshold * self.offset

    def score(self, layer: int, probs: Tensor, alive: Tensor) -> Tensor:
        mass = token_importance(probs, alive)  # (B, n)
        return mass * alive.sum(-1, keepdim=True) if self.relative else mass

    def protected(self, layer: int, scores: Tensor, alive: Tensor) -> Tensor:
        return protected_tokens(scores, alive, self.min_tokens)

    def soft_mask(self, layer: int, scores: Tensor) -> Tensor:
        return torch.sigmoid((scores - self.thresholds()[layer]) / self.temperature)

    def threshold(self, layer: int) -> Tensor:
        return self.thresholds()[layer]

    def keep(self, layer: int, scores: Tensor) -> Tensor:
        """(B, n) importance -> (B, n) bool: above the layer's threshold (`protected` tokens stay regardless)."""
        return scores > self.threshold(layer)


class LTPClassifier(nn.Module):
    """An encoder classifier plus LTP thresholds.

    `forward(ids, mask, mode)` with mode dense | soft | hard | masked (see `prunex.prune.encoder_forward`);
    `mode=None` is what the checkpoint's stage is for: dense after the base stage, hard after soft/hard.
    """

    def __init__(
        self,
        model: nn.Module,
        thresholds: LTPThresholds,
        *,
        tokenizer: Any = None,
        stage: str = "hard",
        label_names: list[str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if stage not in LTP_STAGES:
            raise PrunexError(f"unknown LTP stage {stage!r}; use one of {LTP_STAGES}")
        self.model = model
        self.thresholds = thresholds
        self.adapter = encoder_adapter(model)
        self.tokenizer = tokenizer
        self.stage = stage
        self.label_names = label_names or [str(i) for i in range(model.config.num_labels)]
        self.info = info or {}  # where it came from: checkpoint path, task, split seed, max length

    @property
    def inference_mode(self) -> str:
        return "dense" if self.stage == "base" else "hard"

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, mode: str | None = None
    ) -> EncoderResult:
        """(B, T) right-padded ids (each row starting with [CLS]) -> logits, kept counts, FLOPs."""
        mode = mode or self.inference_mode
        return run_encoder(self.adapter, input_ids, attention_mask, None if mode == "dense" else self.thresholds, mode)
