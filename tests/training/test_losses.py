"""Tests for training.model.losses: the BCE pair and the reference focal loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.model.losses import bce_pair, focal_loss


def _focal_reference(scores: np.ndarray, target: np.ndarray, gamma: float, eps: float) -> float:
    """The reference computation written out row by row in float64."""
    total = 0.0
    for s, t in zip(scores.ravel().astype(np.float64), target.ravel().astype(np.int64), strict=True):
        probs = np.array([1.0 - s, s])
        onehot = np.clip(np.eye(2)[t], eps, 1.0 - eps)
        pt = float((onehot * probs).sum() + eps)
        total += -((1.0 - pt) ** gamma) * np.log(pt)
    return total / scores.size


def test_bce_pair_matches_torch_bce() -> None:
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 36, generator=gen)
    noisy = torch.rand(3, 12, generator=gen)
    expected = F.binary_cross_entropy(clean, torch.zeros_like(clean)) + F.binary_cross_entropy(
        noisy, torch.ones_like(noisy)
    )
    manual = -torch.log(1 - clean).mean() - torch.log(noisy).mean()
    loss = bce_pair(clean, noisy)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, manual)


def test_bce_pair_is_zero_when_perfect_and_finite_when_wrong() -> None:
    assert bce_pair(torch.zeros(10), torch.ones(10)).item() == pytest.approx(0.0, abs=1e-6)
    clean = torch.ones(4, requires_grad=True)
    noisy = torch.zeros(4, requires_grad=True)
    loss = bce_pair(clean, noisy)
    loss.backward()
    assert torch.isfinite(loss)
    assert clean.grad is not None and torch.isfinite(clean.grad).all()
    assert noisy.grad is not None and torch.isfinite(noisy.grad).all()


def test_bce_pair_runs_under_autocast() -> None:
    clean = torch.full((8,), 0.25)
    noisy = torch.full((8,), 0.75)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = bce_pair(clean.bfloat16(), noisy.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-2 * np.log(0.75), rel=1e-2)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_focal_loss_matches_direct_formula(gamma: float) -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(200).astype(np.float32)
    scores[:4] = [0.0, 1.0, 0.0, 1.0]
    target = (rng.random(200) > 0.7).astype(np.float32)
    target[:4] = [0.0, 0.0, 1.0, 1.0]
    loss = focal_loss(torch.from_numpy(scores), torch.from_numpy(target), gamma=gamma)
    assert loss.item() == pytest.approx(_focal_reference(scores, target, gamma, 1e-5), rel=1e-5)


def test_focal_loss_gamma_zero_is_smoothed_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(64, generator=gen)
    target = (torch.rand(64, generator=gen) > 0.5).float()
    eps = 1e-3
    p_true = torch.where(target > 0, scores, 1 - scores)
    smoothed = -torch.log((1 - eps) * p_true + eps * (1 - p_true) + eps).mean()
    torch.testing.assert_close(focal_loss(scores, target, gamma=0.0, smoothing=eps), smoothed)


def test_focal_loss_down_weights_easy_patches() -> None:
    target = torch.tensor([1.0])
    easy, hard = torch.tensor([0.9]), torch.tensor([0.1])
    ratio_focal = focal_loss(hard, target).item() / focal_loss(easy, target).item()
    ratio_ce = focal_loss(hard, target, gamma=0.0).item() / focal_loss(easy, target, gamma=0.0).item()
    assert ratio_focal > 10 * ratio_ce


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_gradient_finite_at_zero_and_one(gamma: float) -> None:
    scores = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    loss = focal_loss(scores, target, gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss)
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
    # Wrong answers pull the score the right way; right answers at γ = 2 have (almost) no gradient.
    assert scores.grad[1] > 0 and scores.grad[2] < 0


def test_focal_loss_perfect_prediction_is_near_zero_and_shapes_flatten() -> None:
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert focal_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    scores = torch.rand(2, 1, 4, 4)
    flat = focal_loss(scores.reshape(-1, 1), torch.ones(32))
    torch.testing.assert_close(focal_loss(scores, torch.ones(2, 4, 4)), flat)


def test_focal_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="same number of elements"):
        focal_loss(torch.rand(4), torch.ones(5))
    with pytest.raises(ValueError, match="smoothing"):
        focal_loss(torch.rand(4), torch.ones(4), smoothing=0.0)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(torch.rand(4), torch.ones(4), gamma=-1.0)
