"""Export-safe Gaussian smoothing of anomaly maps, equal to scipy.ndimage.gaussian_filter (mode 'reflect')."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy's 1-D kernel: radius int(truncate·σ + 0.5), normalised to sum 1 -> (2·radius + 1,) float32."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def reflect_indices(size: int, radius: int) -> Tensor:
    """Source index of every sample of a length-`size` axis padded by `radius` on both sides, in scipy's
    'reflect' mode (numpy 'symmetric': d c b a | a b c d | d c b a, the edge sample repeated) -> int64."""
    i = torch.arange(-radius, size + radius)
    j = torch.remainder(i, 2 * size)  # the mirrored signal has period 2·size; also covers radius > size
    return torch.where(j < size, j, 2 * size - 1 - j)


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur of (B, S, S) maps at a fixed size S; σ = 0 leaves maps unchanged.

    Padding is a gather with precomputed indices (exports as ONNX Gather), so the result matches
    `scipy.ndimage.gaussian_filter(m, sigma, mode='reflect', truncate=4.0)` up to float rounding.
    """

    kernel_x: Tensor
    kernel_y: Tensor
    pad_index: Tensor

    def __init__(self, sigma: float, size: int, truncate: float = 4.0) -> None:
        super().__init__()
        if sigma < 0 or not math.isfinite(sigma):
            raise ValueError(f"smoothing sigma must be a finite value >= 0, got {sigma}")
        if size < 1:
            raise ValueError(f"map size must be >= 1, got {size}")
        self.sigma = float(sigma)
        self.size = size
        kernel = gaussian_kernel1d(sigma, truncate) if sigma > 0 else torch.ones(1)
        self.radius = (kernel.numel() - 1) // 2
        # Constants derived from (sigma, size): not part of a checkpoint.
        self.register_buffer("kernel_x", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_y", kernel.view(1, 1, -1, 1), persistent=False)
        self.register_buffer("pad_index", reflect_indices(size, self.radius), persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        """`maps`: (B, S, S) float32 -> (B, S, S) float32, smoothed."""
        if maps.shape[-2:] != (self.size, self.size):
            raise ValueError(f"maps must be (B, {self.size}, {self.size}), got {tuple(maps.shape)}")
        if self.radius == 0:
            return maps
        x = maps.unsqueeze(1)
        x = F.conv2d(torch.index_select(x, 3, self.pad_index), self.kernel_x)
        x = F.conv2d(torch.index_select(x, 2, self.pad_index), self.kernel_y)
        return x.squeeze(1)
