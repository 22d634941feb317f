"""Tests for training.anomalies.perlin: Perlin noise, anomaly masks and the patch-level target."""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.anomalies.perlin import (
    AnomalyMaskError,
    EmptyForegroundError,
    patch_mask,
    perlin_mask,
    perlin_noise,
)


def _tiled_perlin(shape: tuple[int, int], scales: tuple[int, int], seed: int) -> np.ndarray:
    """Independent, tile-based Perlin for sizes divisible by the scales (the reference's construction)."""
    rng = np.random.default_rng(seed)
    (h, w), (sy, sx) = shape, scales
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(sy + 1, sx + 1))
    grads = np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # (y, x) components
    ch, cw = h // sy, w // sx
    fy = (np.arange(h) % ch / ch)[:, None]
    fx = (np.arange(w) % cw / cw)[None, :]

    def tile(dy: int, dx: int) -> np.ndarray:
        g = grads[dy : dy + sy, dx : dx + sx]
        return np.repeat(np.repeat(g, ch, axis=0), cw, axis=1)

    def dot(dy: int, dx: int) -> np.ndarray:
        g = tile(dy, dx)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    ty, tx = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - tx) + dot(0, 1) * tx
    bottom = dot(1, 0) * (1 - tx) + dot(1, 1) * tx
    return np.sqrt(2) * (top * (1 - ty) + bottom * ty)


@pytest.mark.parametrize("scales", [(1, 1), (4, 8), (32, 2)])
def test_perlin_noise_matches_tiled_construction(scales: tuple[int, int]) -> None:
    ours = perlin_noise((64, 64), scales, np.random.default_rng(3))
    expected = _tiled_perlin((64, 64), scales, seed=3)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_perlin_noise_is_zero_on_lattice_and_smooth() -> None:
    noise = perlin_noise((96, 96), (4, 4), np.random.default_rng(0))
    lattice = noise[::24, ::24]  # pixel i sits on the lattice when i·4/96 is an integer
    np.testing.assert_allclose(lattice, 0.0, atol=1e-6)
    assert np.abs(noise).max() < 1.5
    assert np.abs(noise).max() > 0.1  # not trivially flat
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2


def test_perlin_noise_any_size() -> None:
    noise = perlin_noise((37, 250), (8, 32), np.random.default_rng(1))
    assert noise.shape == (37, 250)
    assert np.isfinite(noise).all()


def test_perlin_noise_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scales"):
        perlin_noise((8, 8), (0, 2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        perlin_noise((0, 8), (2, 2), np.random.default_rng(0))


def _disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2


def test_perlin_mask_is_nonempty_and_inside_foreground() -> None:
    foreground = _disc(64, 20)
    rng = np.random.default_rng(7)
    for _ in range(25):
        mask = perlin_mask((64, 64), rng, foreground=foreground)
        assert mask.dtype == bool and mask.shape == (64, 64)
        assert mask.any()
        assert not (mask & ~foreground).any()


def test_perlin_mask_without_foreground_and_odd_size() -> None:
    rng = np.random.default_rng(11)
    fractions = [perlin_mask((50, 70), rng, foreground=None).mean() for _ in range(20)]
    assert all(f > 0 for f in fractions)
    # Thresholding noise in [−1, 1] at 0.5 gives blobs, not a full image.
    assert 0.0 < np.mean(fractions) < 0.5


def test_perlin_mask_is_reproducible() -> None:
    fg = _disc(48, 15)
    a = perlin_mask((48, 48), np.random.default_rng(5), foreground=fg)
    b = perlin_mask((48, 48), np.random.default_rng(5), foreground=fg)
    np.testing.assert_array_equal(a, b)


def test_empty_foreground_raises_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(EmptyForegroundError, match="no pixel"):
        perlin_mask((64, 64), np.random.default_rng(0), foreground=np.zeros((64, 64), bool))
    assert time.perf_counter() - start < 0.5


def test_unreachable_mask_gives_up_after_max_tries() -> None:
    # Noise never exceeds ~1, so a threshold of 2 can never produce a pixel.
    with pytest.raises(AnomalyMaskError, match="3 draws"):
        perlin_mask((32, 32), np.random.default_rng(0), foreground=None, threshold=2.0, max_tries=3)


def test_perlin_mask_rejects_mismatched_foreground() -> None:
    with pytest.raises(ValueError, match="foreground has shape"):
        perlin_mask((32, 32), np.random.default_rng(0), foreground=np.ones((16, 16), bool))


def test_patch_mask_equals_max_pool() -> None:
    rng = np.random.default_rng(2)
    large = rng.random((32, 48)) > 0.97
    small = patch_mask(large, (4, 6))
    assert small.shape == (4, 6) and small.dtype == np.float32
    expected = np.zeros((4, 6), np.float32)
    for i in range(4):
        for j in range(6):
            expected[i, j] = large[i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8].max()
    np.testing.assert_array_equal(small, expected)
    assert 0 < small.sum() < small.size  # the draw exercises both values


def test_patch_mask_single_pixel_marks_its_cell() -> None:
    large = np.zeros((16, 16), bool)
    large[9, 2] = True
    small = patch_mask(large, (4, 4))
    assert small[2, 0] == 1.0 and small.sum() == 1.0


def test_patch_mask_rejects_uneven_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        patch_mask(np.zeros((30, 30), bool), (4, 4))
