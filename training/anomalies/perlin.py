"""Perlin-noise anomaly masks for the texture anomaly generator (UTAG), numpy + OpenCV, per sample."""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

_SQRT2 = float(np.sqrt(2.0))


class AnomalyMaskError(ValueError):
    """No usable anomaly mask could be made for a sample."""


class EmptyForegroundError(AnomalyMaskError):
    """The foreground mask has no pixel, so no anomaly can be placed on the part."""


def _fade(t: np.ndarray) -> np.ndarray:
    # Quintic smoothstep 6t⁵ − 15t⁴ + 10t³: zero first and second derivatives at the lattice points.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], scales: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with `scales` = (cells along y, cells along x) lattice periods.

    Returns (H, W) float32, roughly in [−1, 1] (the classic noise times √2).

    Pixel i of an axis of length n with s cells sits at lattice coordinate i·s/n, the same positions the
    reference samples when n is a multiple of s. Computing the coordinate directly, instead of tiling
    whole cells, makes any H, W work (no padding and cropping needed) without stretching the noise.
    """
    height, width = shape
    sy, sx = scales
    if height <= 0 or width <= 0:
        raise ValueError(f"perlin_noise: shape must be positive, got {shape}")
    if sy <= 0 or sx <= 0:
        raise ValueError(f"perlin_noise: scales must be positive cell counts, got {scales}")
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(sy + 1, sx + 1))
    grad_y = np.sin(angles).astype(np.float32)
    grad_x = np.cos(angles).astype(np.float32)

    u = np.arange(height, dtype=np.float64) * (sy / height)
    v = np.arange(width, dtype=np.float64) * (sx / width)
    cy = np.floor(u).astype(np.intp)
    cx = np.floor(v).astype(np.intp)
    fy = (u - cy).astype(np.float32)[:, None]  # (H, 1) offset inside the cell
    fx = (v - cx).astype(np.float32)[None, :]  # (1, W)

    def corner(dy: int, dx: int) -> np.ndarray:
        # Dot product of the corner's gradient with the offset from that corner. Gathering rows, then
        # columns with np.take, is several times faster than one 2-D fancy index.
        gy = np.take(grad_y[cy + dy], cx + dx, axis=1)
        gx = np.take(grad_x[cy + dy], cx + dx, axis=1)
        return gy * (fy - dy) + gx * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = n00 + tx * (n01 - n00)
    bottom = n10 + tx * (n11 - n10)
    return (_SQRT2 * (top + ty * (bottom - top))).astype(np.float32)


def _rotate(image: np.ndarray, angle_deg: float) -> np.ndarray:
    height, width = image.shape
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    # Bilinear, constant 0 outside: the corners the rotation uncovers fall below any positive threshold.
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _single_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    threshold: float,
    min_scale_exp: int,
    max_scale_exp: int,
) -> np.ndarray:
    # Scales are drawn independently per axis: elongated blobs as well as round ones.
    sy = 2 ** int(rng.integers(min_scale_exp, max_scale_exp))
    sx = 2 ** int(rng.integers(min_scale_exp, max_scale_exp))
    noise = perlin_noise(shape, (sy, sx), rng)
    noise = _rotate(noise, float(rng.uniform(-90.0, 90.0)))
    return noise > threshold


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    foreground: np.ndarray | None,
    threshold: float = 0.5,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
    max_tries: int = 100,
) -> np.ndarray:
    """Random anomaly region on the part: two thresholded, rotated Perlin masks combined, ∩ foreground.

    `shape`: (H, W) of the mask in pixels (any size, not only powers of two).
    `foreground`: (H, W) bool, True on the part; None = the whole image counts as the part.
    Per-axis lattice scales are 2^randint(min_scale_exp, max_scale_exp) (upper bound exclusive, as in
    the reference: {1, …, 32}); each mask is rotated by U(−90°, 90°) and thresholded at `threshold`.
    The two masks are combined by union, intersection or the first alone, with probability 1/3 each.

    Returns (H, W) bool with at least one True pixel, all inside the foreground.
    Raises `EmptyForegroundError` if the foreground has no pixel, `AnomalyMaskError` if `max_tries`
    draws all miss the foreground (the reference retries forever).
    """
    if len(shape) != 2 or shape[0] <= 0 or shape[1] <= 0:
        raise ValueError(f"perlin_mask: shape must be (H, W) with positive sizes, got {shape}")
    if not 0 <= min_scale_exp < max_scale_exp:
        raise ValueError(f"perlin_mask: need 0 <= min_scale_exp < max_scale_exp, got {min_scale_exp}, {max_scale_exp}")
    if max_tries < 1:
        raise ValueError(f"perlin_mask: max_tries must be >= 1, got {max_tries}")
    shape = (int(shape[0]), int(shape[1]))
    if foreground is not None:
        if foreground.shape != shape:
            raise ValueError(f"perlin_mask: foreground has shape {foreground.shape}, expected the mask shape {shape}")
        foreground = foreground.astype(bool, copy=False)
        if not foreground.any():
            raise EmptyForegroundError(f"perlin_mask: the {shape} foreground mask has no pixel")

    for _ in range(max_tries):
        first = _single_mask(shape, rng, threshold, min_scale_exp, max_scale_exp)
        second = _single_mask(shape, rng, threshold, min_scale_exp, max_scale_exp)
        choice = rng.random()
        if choice > 2.0 / 3.0:
            mask = first | second
        elif choice > 1.0 / 3.0:
            mask = first & second
        else:
            mask = first
        if foreground is not None:
            mask &= foreground
        if mask.any():
            return mask
    fg_pixels = shape[0] * shape[1] if foreground is None else int(foreground.sum())
    raise AnomalyMaskError(
        f"perlin_mask: {max_tries} draws at threshold {threshold} all missed the foreground "
        f"({fg_pixels} of {shape[0] * shape[1]} pixels); the foreground is too small for Perlin masks"
    )


def patch_mask(large_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patch-level target: a patch is positive if any pixel of its cell is in the mask (max-pooling).

    `large_mask`: (H, W) bool or {0, 1}, pixel mask; H and W must be multiples of the grid.
    `grid`: (h, w) patch grid of the discriminator output.
    Returns (h, w) float32 in {0, 1}.
    """
    if large_mask.ndim != 2:
        raise ValueError(f"patch_mask: large_mask must be (H, W), got shape {large_mask.shape}")
    height, width = large_mask.shape
    gh, gw = int(grid[0]), int(grid[1])
    if gh <= 0 or gw <= 0 or height % gh or width % gw:
        raise ValueError(f"patch_mask: mask {large_mask.shape} cannot be split into a {grid} grid of equal cells")
    cells = large_mask.astype(bool, copy=False).reshape(gh, height // gh, gw, width // gw)
    return np.asarray(cells.any(axis=(1, 3)), dtype=np.float32)
