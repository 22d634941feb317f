"""Tests for training.anomalies.texture_anomaly: texture augmentation, β, blending and the per-sample generator."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from training.anomalies.perlin import EmptyForegroundError, patch_mask
from training.anomalies.texture_anomaly import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TEXTURE_OPS,
    TextureOp,
    apply_texture_op,
    augment_texture,
    augment_texture_gray,
    blend_texture,
    draw_texture_ops,
    sample_beta,
    texture_anomaly,
)

MEAN = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
STD = np.asarray(IMAGENET_STD, np.float32)[:, None, None]


def _denormalise(x: np.ndarray) -> np.ndarray:
    return x * STD + MEAN


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)


def test_beta_is_clipped_normal() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([sample_beta(rng) for _ in range(20_000)])
    assert draws.min() >= 0.2 and draws.max() <= 0.8
    # P(N(0.5, 0.3) < 0.2) = Φ(−1) ≈ 0.159 lands exactly on each bound.
    assert np.mean(draws == 0.2) == pytest.approx(0.159, abs=0.015)
    assert np.mean(draws == 0.8) == pytest.approx(0.159, abs=0.015)
    assert draws.mean() == pytest.approx(0.5, abs=0.01)


def test_draw_texture_ops_three_distinct_with_reference_ranges() -> None:
    rng = np.random.default_rng(1)
    seen: Counter[str] = Counter()
    for _ in range(500):
        ops = draw_texture_ops(rng)
        names = [op.name for op in ops]
        assert len(names) == 3 and len(set(names)) == 3
        seen.update(names)
        for op in ops:
            if op.name in ("contrast", "brightness"):
                assert 0.8 <= op.params[0] <= 1.2
            elif op.name == "color":
                assert 0.8 <= op.params[0] <= 1.2 and -0.2 <= op.params[1] <= 0.2
            elif op.name == "rotate":
                assert -45.0 <= op.params[0] <= 45.0
    assert set(seen) == set(TEXTURE_OPS)


def test_simple_ops_do_what_they_say() -> None:
    image = _texture(24, 32)
    np.testing.assert_array_equal(apply_texture_op(image, TextureOp("hflip")), image[:, ::-1])
    np.testing.assert_array_equal(apply_texture_op(image, TextureOp("vflip")), image[::-1])
    np.testing.assert_array_equal(apply_texture_op(image, TextureOp("brightness", (1.0,))), image)
    np.testing.assert_array_equal(apply_texture_op(image, TextureOp("rotate", (0.0,))), image)
    gray = apply_texture_op(image, TextureOp("grayscale"))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    dim = (image // 2 + 40).astype(np.uint8)
    stretched = apply_texture_op(dim, TextureOp("autocontrast"))
    assert (stretched.reshape(-1, 3).min(axis=0) == 0).all()
    assert (stretched.reshape(-1, 3).max(axis=0) == 255).all()
    brighter = apply_texture_op(dim, TextureOp("brightness", (1.2,)))
    assert brighter.mean() > dim.mean()


@pytest.mark.parametrize("name", TEXTURE_OPS)
def test_ops_on_gray_one_channel_match_gray_three_channels(name: str) -> None:
    # The gray texture is processed on one channel; it must equal processing the 3-channel gray image.
    params = {"contrast": (1.15,), "brightness": (0.85,), "color": (1.2, 0.15, 1.0), "rotate": (30.0,)}
    op = TextureOp(name, params.get(name, ()))  # type: ignore[arg-type]
    gray1 = cv2.cvtColor(_texture(24, 32, seed=4), cv2.COLOR_RGB2GRAY)[..., None]
    gray3 = np.repeat(gray1, 3, axis=2)
    out1 = apply_texture_op(gray1, op)
    out3 = apply_texture_op(gray3, op)
    assert out1.shape == gray1.shape and out1.dtype == np.uint8
    for c in range(3):
        assert np.abs(out3[..., c].astype(int) - out1[..., 0].astype(int)).max() <= 1


def test_augment_texture_shape_range_and_gray_channels() -> None:
    rng = np.random.default_rng(2)
    texture = _texture(50, 90)  # smaller than the target: upscaled, wide: centre-cropped
    ops = draw_texture_ops(rng)
    colour = augment_texture(texture, 64, ops=ops)
    gray = augment_texture_gray(texture, 64, ops=ops)
    for out in (colour, gray):
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        pixels = _denormalise(out)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    pixels = _denormalise(gray)
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-5)
    np.testing.assert_allclose(pixels[1], pixels[2], atol=1e-5)


def test_colour_and_gray_textures_share_geometry() -> None:
    texture = _texture(80, 120, seed=6)
    ops = (TextureOp("rotate", (33.0,)), TextureOp("hflip"), TextureOp("vflip"))
    colour = (_denormalise(augment_texture(texture, 64, ops=ops)) * 255).round().astype(np.uint8)
    gray = _denormalise(augment_texture_gray(texture, 64, ops=ops))[0] * 255
    luma = cv2.cvtColor(np.ascontiguousarray(colour.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
    # Same ops, same parameters: the gray texture is the luma of the colour one (up to rounding).
    assert np.abs(luma.astype(np.float32) - gray).max() <= 2.0


def test_augment_texture_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        augment_texture(np.zeros((8, 8, 3), np.float32), 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ops or rng"):
        augment_texture(np.zeros((8, 8, 3), np.uint8), 8)


def test_blend_formula_at_extremes_and_inside_mask_only() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(3, 16, 16)).astype(np.float32)
    texture = rng.normal(size=(3, 16, 16)).astype(np.float32)
    mask = rng.random((16, 16)) > 0.6
    np.testing.assert_array_equal(blend_texture(image, texture, mask, 1.0), image)
    full = blend_texture(image, texture, mask, 0.0)
    np.testing.assert_array_equal(full[:, mask], texture[:, mask])
    np.testing.assert_array_equal(full[:, ~mask], image[:, ~mask])
    half = blend_texture(image, texture, mask, 0.3)
    expected = image * (1 - mask) + 0.7 * texture * mask + 0.3 * image * mask
    np.testing.assert_allclose(half, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(half[:, ~mask], image[:, ~mask])
    with pytest.raises(ValueError, match="bool"):
        blend_texture(image, texture, mask.astype(np.uint8), 0.5)


def _inputs(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.normal(size=(3, size, size)).astype(np.float32)
    depth = np.repeat(rng.normal(size=(1, size, size)), 3, axis=0).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    foreground = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    return rgb, depth, foreground


def test_texture_anomaly_modalities_masks_and_unchanged_inputs() -> None:
    rgb, depth, foreground = _inputs(32, 0)
    textures = [_texture(40, 60, seed=s) for s in range(3)]
    rng = np.random.default_rng(10)
    counts: Counter[str] = Counter()
    for _ in range(150):
        out = texture_anomaly(rgb, depth, foreground, textures, rng, grid=(4, 4))
        counts[out.modality] += 1
        assert out.mask.shape == (32, 32) and out.mask.any()
        assert not (out.mask & ~foreground).any()
        np.testing.assert_array_equal(out.patch_mask, patch_mask(out.mask, (4, 4)))
        assert 0.2 <= out.beta <= 0.8
        for name, clean, augmented in (("rgb", rgb, out.rgb), ("depth", depth, out.depth)):
            assert augmented.shape == clean.shape and augmented.dtype == np.float32
            np.testing.assert_array_equal(augmented[:, ~out.mask], clean[:, ~out.mask])
            if out.modality in ("both", name):
                assert not np.array_equal(augmented[:, out.mask], clean[:, out.mask])
            else:
                np.testing.assert_array_equal(augmented, clean)
    for name in ("both", "rgb", "depth"):
        assert counts[name] / 150 == pytest.approx(1 / 3, abs=0.12)


def test_depth_receives_a_gray_texture() -> None:
    rgb, depth, foreground = _inputs(32, 1)
    textures = [_texture(40, 40, seed=8)]
    rng = np.random.default_rng(0)
    out = next(
        o
        for o in (texture_anomaly(rgb, depth, foreground, textures, rng, grid=(4, 4)) for _ in range(50))
        if o.modality == "depth"
    )
    beta, m = out.beta, out.mask
    # Undo the blend inside the mask to recover the texture, then its channels must hold one gray value.
    texture = (out.depth[:, m] - beta * depth[:, m]) / (1 - beta)
    pixels = texture * STD[:, :, 0] + MEAN[:, :, 0]
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-4)
    np.testing.assert_allclose(pixels[1], pixels[2], atol=1e-4)


def test_texture_anomaly_is_reproducible() -> None:
    rgb, depth, foreground = _inputs(32, 2)
    textures = [_texture(48, 48, seed=s) for s in range(4)]
    a = texture_anomaly(rgb, depth, foreground, textures, np.random.default_rng(4), grid=(8, 8))
    b = texture_anomaly(rgb, depth, foreground, textures, np.random.default_rng(4), grid=(8, 8))
    assert a.modality == b.modality and a.beta == b.beta
    for x, y in ((a.rgb, b.rgb), (a.depth, b.depth), (a.mask, b.mask)):
        np.testing.assert_array_equal(x, y)


def test_texture_anomaly_errors() -> None:
    rgb, depth, foreground = _inputs(32, 3)
    textures = [_texture(40, 40)]
    rng = np.random.default_rng(0)
    with pytest.raises(EmptyForegroundError):
        texture_anomaly(rgb, depth, np.zeros_like(foreground), textures, rng, grid=(4, 4))
    with pytest.raises(ValueError, match="no textures"):
        texture_anomaly(rgb, depth, foreground, [], rng, grid=(4, 4))
    with pytest.raises(ValueError, match="grid"):
        texture_anomaly(rgb, depth, foreground, textures, rng, grid=(5, 5))
    with pytest.raises(ValueError, match="depth"):
        texture_anomaly(rgb, depth[:, :16], foreground, textures, rng, grid=(4, 4))


def _depth_only(depth_anomaly: str, seed: int, n: int = 60) -> list:
    rgb, depth, foreground = _inputs(192, seed)  # big enough for the blur (σ = S/48 = 4 px) to show
    textures = [_texture(200, 200, seed=s) for s in range(2)]
    rng = np.random.default_rng(seed)
    outs = (
        texture_anomaly(rgb, depth, foreground, textures, rng, grid=(8, 8), depth_anomaly=depth_anomaly)  # type: ignore[arg-type]
        for _ in range(n)
    )
    return [(o, rgb, depth, foreground) for o in outs if o.modality == "depth"]


def test_smooth_depth_anomaly_is_a_dent_or_bump_on_the_part() -> None:
    found = _depth_only("smooth", seed=5)
    assert len(found) >= 10
    signs = set()
    for out, rgb, depth, foreground in found:
        delta = out.depth - depth
        np.testing.assert_array_equal(out.rgb, rgb)  # depth only
        np.testing.assert_allclose(delta[0], delta[1]) and np.testing.assert_allclose(delta[1], delta[2])
        assert not delta[:, ~foreground].any()  # never off the part
        assert not (out.mask & ~foreground).any() and out.mask.any()
        peak = np.abs(delta[0]).max()
        assert 0.2 - 1e-6 <= peak <= 1.0 + 1e-6  # the amplitude range, reached at the bump's centre
        assert (delta[0] >= 0).all() or (delta[0] <= 0).all()  # one dent or one bump, not a texture
        signs.add(bool(delta[0].sum() > 0))
        # Smooth: neighbouring pixels on the part differ by a small fraction of the peak (a texture blend
        # jumps by the full contrast at the region's edge).
        inner = cv2.erode(foreground.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        step = np.abs(np.diff(delta[0], axis=1))[:, :-1][inner[:, 1:-1]]
        assert step.max() < 0.25 * peak
        # The mask is where the change is large: every masked pixel moved by at least a quarter of the peak.
        assert (np.abs(delta[0][out.mask]) >= 0.25 * peak - 1e-6).all()
    assert signs == {True, False}  # dents and bumps both occur


def test_mixed_depth_anomalies_give_both_kinds_and_bad_mode_is_refused() -> None:
    kinds = set()
    for out, _, depth, _ in _depth_only("mixed", seed=6, n=90):
        delta = (out.depth - depth)[0]
        kinds.add("smooth" if (delta >= 0).all() or (delta <= 0).all() else "texture")
    assert kinds == {"smooth", "texture"}
    rgb, depth, foreground = _inputs(32, 3)
    with pytest.raises(ValueError, match="depth_anomaly"):
        texture_anomaly(
            rgb,
            depth,
            foreground,
            [_texture(40, 40)],
            np.random.default_rng(0),
            grid=(4, 4),
            depth_anomaly="bumpy",  # type: ignore[arg-type]
        )
