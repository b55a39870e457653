"""The alpha-sigmoid: first entry of alpha-entmax([x, 0]) (Peters et al., 2019; used by DCP).

alpha = 1 is the logistic sigmoid; alpha > 1 reaches exactly 0 and 1 (at x = -+1/(alpha-1)), which lets
training end in hard decisions; alpha = inf is the step x > 0 used at inference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_BISECTION_STEPS = 24  # halvings of [0, 1]: p to ~6e-8
_NEAR_ONE = 1e-3  # below alpha = 1 + this, the sigmoid is used (entmax -> sigmoid as alpha -> 1)


class _EntmaxPair(torch.autograd.Function):
    """p in [0, 1] with p^a - (1 - p)^a = a x, a = alpha - 1 (alpha-entmax of [x, 0], first entry)."""

    @staticmethod
    def forward(ctx, x: Tensor, a: float) -> Tensor:  # type: ignore[override]
        target = (a * x).clamp(-1.0, 1.0)
        low, high = torch.zeros_like(x), torch.ones_like(x)
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            above = mid.pow(a) - (1 - mid).pow(a) > target
            high = torch.where(above, mid, high)
            low = torch.where(above, low, mid)
        p = (low + high) / 2
        p = torch.where(target >= 1.0, torch.ones_like(p), torch.where(target <= -1.0, torch.zeros_like(p), p))
        ctx.save_for_backward(p)
        ctx.a = a
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        a = ctx.a
        # Implicit derivative of p^a - (1-p)^a = a x: dp/dx = 1 / (p^(a-1) + (1-p)^(a-1)); 0 outside (0, 1).
        inside = (p > 0) & (p < 1)
        pc = p.clamp(1e-6, 1 - 1e-6)
        slope = 1.0 / (pc.pow(a - 1) + (1 - pc).pow(a - 1))
        return grad * torch.where(inside, slope, torch.zeros_like(slope)), None


def alpha_sigmoid(x: Tensor, alpha: float) -> Tensor:
    """Keep probability for logits `x` (any shape): sigmoid at alpha=1, step (x > 0) at alpha=inf."""
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    if math.isinf(alpha):
        return (x > 0).to(x.dtype)
    if alpha < 1 + _NEAR_ONE:
        return torch.sigmoid(x)
    return _EntmaxPair.apply(x, alpha - 1.0)
