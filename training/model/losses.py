"""Training losses: BCE on clean vs Gaussian-noised scores, focal loss on texture-anomaly patch scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _float32_no_autocast(x: Tensor) -> tuple[Tensor, torch.autocast]:
    # BCE on probabilities is refused inside autocast, and log(p) near 0 and 1 needs float32 anyway.
    return x.float(), torch.autocast(device_type=x.device.type, enabled=False)


def bce_pair(scores_clean: Tensor, scores_noisy: Tensor) -> Tensor:
    """BCE(clean, 0) + BCE(noisy, 1), each mean-reduced over all elements.

    `scores_clean`, `scores_noisy`: discriminator outputs, probabilities in [0, 1], any shape (the two
    may differ). Log terms are clamped at −100 by torch, so scores of exactly 0 or 1 stay finite.
    Returns a scalar float32 tensor.
    """
    if scores_clean.numel() == 0 or scores_noisy.numel() == 0:
        raise ValueError(
            f"bce_pair: empty scores (clean {tuple(scores_clean.shape)}, noisy {tuple(scores_noisy.shape)})"
        )
    clean, ctx = _float32_no_autocast(scores_clean)
    noisy = scores_noisy.float()
    with ctx:
        loss_clean = F.binary_cross_entropy(clean, torch.zeros_like(clean))
        loss_noisy = F.binary_cross_entropy(noisy, torch.ones_like(noisy))
    return loss_clean + loss_noisy


def focal_loss(scores: Tensor, target: Tensor, gamma: float = 2.0, smoothing: float = 1e-5) -> Tensor:
    """Two-class focal loss on patch scores, the reference's formulation (α = 1 for both classes).

    `scores`: anomaly probabilities s in [0, 1], any shape; the class probabilities are [1 − s, s].
    `target`: same number of elements, 1 = anomalous patch, 0 = normal (a soft target t is read as the
    one-hot [1 − t, t]). The one-hot is clamped to [smoothing, 1 − smoothing];
    pt = Σ onehot·p + smoothing; loss = −(1 − pt)^γ · log pt, averaged over all patches.
    Safe at s = 0 and s = 1: pt ≥ smoothing > 0, and 1 − pt is clamped at 0 (pt can round to just
    above 1, which a non-integer γ would turn into NaN).
    Returns a scalar float32 tensor.
    """
    if scores.numel() != target.numel():
        raise ValueError(
            f"focal_loss: scores {tuple(scores.shape)} and target {tuple(target.shape)} "
            "must have the same number of elements"
        )
    if scores.numel() == 0:
        raise ValueError("focal_loss: empty scores")
    if gamma < 0.0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    if not 0.0 < smoothing < 0.5:
        # smoothing keeps pt away from 0, so log pt stays finite when a score is exactly wrong.
        raise ValueError(f"focal_loss: smoothing must be in (0, 0.5), got {smoothing}")
    s, ctx = _float32_no_autocast(scores.reshape(-1))
    with ctx:
        t = target.reshape(-1).to(device=s.device, dtype=torch.float32)
        onehot = torch.stack([1.0 - t, t], dim=1).clamp(smoothing, 1.0 - smoothing)
        probs = torch.stack([1.0 - s, s], dim=1)
        pt = (onehot * probs).sum(dim=1) + smoothing
        loss = -((1.0 - pt).clamp_min(0.0) ** gamma) * torch.log(pt)
        return loss.mean()
