"""Scoring preprocessed arrays with the torch model's forward: the reference numbers for training's
validation, calibration, `evaluate --run` and export."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def score_with_torch(
    model: nn.Module,
    rgb: np.ndarray,
    depth: np.ndarray,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model.forward` in eval mode.

    `rgb`, `depth`: (N, 3, S, S) float32, ImageNet-normalised. Returns `scores` (N,) float32 (max raw patch
    score) and `maps` (N, S, S) float32 (upsampled, smoothed patch scores). The model's train/eval mode is
    restored afterwards.
    """
    if rgb.shape != depth.shape:
        raise ValueError(f"rgb {rgb.shape} and depth {depth.shape} must have the same shape")
    was_training = model.training
    model.eval()
    scores, maps = [], []
    try:
        for start in range(0, len(rgb), batch_size):
            r = torch.from_numpy(np.ascontiguousarray(rgb[start : start + batch_size])).to(device)
            d = torch.from_numpy(np.ascontiguousarray(depth[start : start + batch_size])).to(device)
            s, m = model(r, d)
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not scores:
        size = rgb.shape[-1]
        return np.zeros(0, np.float32), np.zeros((0, size, size), np.float32)
    return np.concatenate(scores), np.concatenate(maps)
