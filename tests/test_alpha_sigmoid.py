"""The alpha-sigmoid: sigmoid at alpha=1, sparsemax at alpha=2, step at alpha=inf, exact 0/1 for alpha>1."""

from __future__ import annotations

import math

import pytest
import torch

from prunex.prune.alpha_sigmoid import alpha_sigmoid

X = torch.linspace(-6, 6, 241, dtype=torch.float64)


def test_alpha_one_is_logistic_sigmoid():
    """alpha = 1 is exactly torch.sigmoid."""
    assert torch.equal(alpha_sigmoid(X, 1.0), torch.sigmoid(X))


def test_alpha_inf_is_step():
    """alpha = inf gives exactly 0/1, equal to (x > 0); x = 0 itself is dropped."""
    out = alpha_sigmoid(X, math.inf)
    assert torch.equal(out, (X > 0).to(X.dtype))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert alpha_sigmoid(torch.zeros(1), math.inf).item() == 0.0


def test_alpha_two_is_sparsemax():
    """For two entries [x, 0], 2-entmax (sparsemax) is clip((x + 1) / 2, 0, 1)."""
    expected = ((X + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(alpha_sigmoid(X, 2.0), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0, 5.0, 8.0])
def test_exact_zero_and_one_beyond_threshold(alpha):
    """For alpha > 1, p is exactly 1 for x >= 1/(alpha-1), exactly 0 for x <= -1/(alpha-1), inside (0,1) between."""
    t = 1 / (alpha - 1)
    outside = torch.tensor([t, t * 1.01, 2 * t, 100.0], dtype=torch.float64)
    assert torch.all(alpha_sigmoid(outside, alpha) == 1.0)
    assert torch.all(alpha_sigmoid(-outside, alpha) == 0.0)
    inside = torch.linspace(-0.99 * t, 0.99 * t, 51, dtype=torch.float64)
    p = alpha_sigmoid(inside, alpha)
    assert torch.all((p > 0) & (p < 1))
    assert torch.all(p.diff() > 0)  # strictly increasing inside
    torch.testing.assert_close(p + p.flip(0), torch.ones_like(p), atol=1e-6, rtol=0)  # p(-x) = 1 - p(x)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-3), (torch.float32, 5e-3)])
def test_gradient_matches_finite_difference(dtype, tol):
    """At alpha = 1.5 the custom backward equals a central finite difference (eps = 1e-3)."""
    alpha, eps = 1.5, 1e-3
    x = torch.linspace(-1.8, 1.8, 37, dtype=dtype)  # inside (-2, 2), the non-saturated range
    xg = x.clone().requires_grad_(True)
    alpha_sigmoid(xg, alpha).sum().backward()
    numeric = (alpha_sigmoid(x + eps, alpha) - alpha_sigmoid(x - eps, alpha)) / (2 * eps)
    torch.testing.assert_close(xg.grad, numeric, atol=tol, rtol=0)
    assert torch.all(xg.grad > 0)


def test_gradient_zero_when_saturated():
    """Outside |x| < 1/(alpha-1) the output is constant, so the gradient is exactly 0."""
    x = torch.tensor([-5.0, -2.5, 2.5, 5.0], requires_grad=True)
    alpha_sigmoid(x, 1.5).sum().backward()
    assert torch.equal(x.grad, torch.zeros(4))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.999])
def test_alpha_below_one_raises(alpha):
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        alpha_sigmoid(X, alpha)
