"""Unified texture anomaly generator (UTAG): DTD-style textures blended into RGB and depth, per sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import cv2
import numpy as np

# The serving normalisation constants: textures must land in the space of the images they are blended into.
from service.preprocessing.config import IMAGENET_MEAN, IMAGENET_STD
from training.anomalies.mgag import AnomalyTarget, choose_modalities
from training.anomalies.perlin import patch_mask, perlin_mask
from training.config import DEPTH_ANOMALIES, DepthAnomaly

OpName = Literal["contrast", "brightness", "color", "hflip", "vflip", "grayscale", "autocontrast", "equalize", "rotate"]
# The reference's nine texture augmentations (three distinct ones are applied per sample).
TEXTURE_OPS: tuple[OpName, ...] = (
    "contrast",
    "brightness",
    "color",
    "hflip",
    "vflip",
    "grayscale",
    "autocontrast",
    "equalize",
    "rotate",
)


@dataclass(frozen=True)
class TextureOp:
    """One texture augmentation with its drawn parameters.

    contrast / brightness: (factor,); color: (saturation factor, hue shift in turns, saturation first
    as 0/1); rotate: (angle in degrees,); the others take no parameter.
    """

    name: OpName
    params: tuple[float, ...] = ()


def draw_texture_ops(rng: np.random.Generator, count: int = 3) -> tuple[TextureOp, ...]:
    """Draw `count` distinct ops in random order, with the reference's parameter ranges."""
    if not 0 <= count <= len(TEXTURE_OPS):
        raise ValueError(f"draw_texture_ops: count must be in [0, {len(TEXTURE_OPS)}], got {count}")
    ops = []
    for index in rng.choice(len(TEXTURE_OPS), size=count, replace=False):
        name = TEXTURE_OPS[int(index)]
        params: tuple[float, ...] = ()
        if name in ("contrast", "brightness"):
            params = (float(rng.uniform(0.8, 1.2)),)
        elif name == "color":
            # ColorJitter applies saturation and hue in a random order; keep that.
            params = (float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.2, 0.2)), float(rng.integers(2)))
        elif name == "rotate":
            params = (float(rng.uniform(-45.0, 45.0)),)
        ops.append(TextureOp(name, params))
    return tuple(ops)


def _luma(image: np.ndarray) -> np.ndarray:
    # (H, W, 3) uint8 RGB → (H, W) uint8 with the ITU-R 601 weights (PIL's "L").
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _enhance(image: np.ndarray, other: float, factor: float) -> np.ndarray:
    # PIL ImageEnhance semantics against a constant: other + factor · (v − other), rounded and clipped.
    # A 256-entry lookup table is several times faster than float arithmetic on the whole image.
    values = other + factor * (np.arange(256, dtype=np.float32) - other)
    lut = np.clip(values + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut).reshape(image.shape)  # OpenCV drops a trailing channel axis of 1


def _color(image: np.ndarray, saturation: float, hue: float, saturation_first: bool) -> np.ndarray:
    def saturate(img: np.ndarray) -> np.ndarray:
        # Blend with the image's own gray version; addWeighted rounds and saturates to uint8.
        gray = cv2.cvtColor(_luma(img), cv2.COLOR_GRAY2RGB)
        return cv2.addWeighted(img, saturation, gray, 1.0 - saturation, 0.0)

    def shift_hue(img: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)  # hue over 0..255, one turn
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 256)) % 256
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)

    first, second = (saturate, shift_hue) if saturation_first else (shift_hue, saturate)
    return second(first(image))


def _autocontrast(image: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        channel = image[..., c]
        low, high = int(channel.min()), int(channel.max())
        if high <= low:  # a flat channel has nothing to stretch
            out[..., c] = channel
        else:
            scale = 255.0 / (high - low)
            out[..., c] = np.clip((channel.astype(np.float32) - low) * scale + 0.5, 0, 255).astype(np.uint8)
    return out


def apply_texture_op(image: np.ndarray, op: TextureOp) -> np.ndarray:
    """Apply one op to `image`: (H, W, C) uint8, C = 3 (RGB) or 1 (gray). Returns the same shape/dtype.

    On a gray image "color" and "grayscale" are the identity: it has no saturation or hue to change.
    """
    gray = image.shape[2] == 1
    name = op.name
    if name == "contrast":
        mean = float(_luma(image).mean()) if not gray else float(image.mean())
        return _enhance(image, float(int(mean + 0.5)), op.params[0])
    if name == "brightness":
        return _enhance(image, 0.0, op.params[0])
    if name == "color":
        return image if gray else _color(image, op.params[0], op.params[1], bool(op.params[2]))
    if name == "hflip":
        return image[:, ::-1]
    if name == "vflip":
        return image[::-1]
    if name == "grayscale":
        return image if gray else np.repeat(_luma(image)[..., None], 3, axis=2)
    if name == "autocontrast":
        return _autocontrast(image)
    if name == "equalize":
        channels = [cv2.equalizeHist(np.ascontiguousarray(image[..., c])) for c in range(image.shape[2])]
        return np.stack(channels, axis=2)
    if name == "rotate":
        height, width = image.shape[:2]
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), op.params[0], 1.0)
        out = cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (width, height),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return out.reshape(image.shape)  # OpenCV drops a trailing channel axis of 1
    raise ValueError(f"apply_texture_op: unknown op {name!r}, expected one of {TEXTURE_OPS}")


def _resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if min(height, width) == size:  # textures pre-sized once at load time skip the per-sample resize
        return image
    scale = size / min(height, width)
    # torchvision's Resize(int): the shorter side becomes `size`, the longer one is truncated.
    new_h, new_w = (size, int(width * scale)) if height <= width else (int(height * scale), size)
    # INTER_AREA when shrinking stands in for PIL's antialiased bilinear; plain bilinear when growing.
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    out = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return out.reshape(new_h, new_w, image.shape[2])


# uint8 value → ImageNet-normalised float32, per channel: a lookup replaces five full-image float ops.
_NORMALISE_LUT = (
    (np.arange(256, dtype=np.float32)[None, :] / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)[:, None])
    / np.asarray(IMAGENET_STD, np.float32)[:, None]
).astype(np.float32)


def _normalise(image: np.ndarray) -> np.ndarray:
    # (S, S, C) uint8 → (3, S, S) float32 ImageNet-normalised; a gray channel feeds all three.
    out = np.empty((3, *image.shape[:2]), np.float32)
    for c in range(3):
        out[c] = _NORMALISE_LUT[c][image[..., c if image.shape[2] == 3 else 0]]
    return out


def augment_texture(
    texture: np.ndarray,
    size: int,
    rng: np.random.Generator | None = None,
    *,
    ops: Sequence[TextureOp] | None = None,
    gray: bool = False,
) -> np.ndarray:
    """Texture patch for blending: resize (shorter side = `size`), ops, centre crop, ImageNet-normalise.

    `texture`: (H, W, 3) uint8 RGB. `ops`: the augmentations to apply; drawn from `rng` (3 of 9) when
    None. `gray`: convert to luma first (the depth texture), the result's 3 channels then hold the same
    gray value before normalisation.
    Returns (3, size, size) float32, ImageNet-normalised.
    """
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
        raise ValueError(f"augment_texture: texture must be (H, W, 3) uint8, got {texture.shape} {texture.dtype}")
    if size <= 0:
        raise ValueError(f"augment_texture: size must be positive, got {size}")
    if ops is None:
        if rng is None:
            raise ValueError("augment_texture: give either ops or rng to draw them from")
        ops = draw_texture_ops(rng)
    # Gray work runs on one channel: every op maps equal channels to equal channels.
    image = _luma(texture)[..., None] if gray else texture
    image = _resize_shorter(image, size)
    for op in ops:
        image = apply_texture_op(image, op)
    height, width = image.shape[:2]
    top, left = round((height - size) / 2), round((width - size) / 2)
    return _normalise(image[top : top + size, left : left + size])


def augment_texture_gray(
    texture: np.ndarray,
    size: int,
    rng: np.random.Generator | None = None,
    *,
    ops: Sequence[TextureOp] | None = None,
) -> np.ndarray:
    """Gray version of `augment_texture` (the depth texture): (3, size, size) float32, normalised."""
    return augment_texture(texture, size, rng, ops=ops, gray=True)


def sample_beta(
    rng: np.random.Generator, mean: float = 0.5, std: float = 0.3, low: float = 0.2, high: float = 0.8
) -> float:
    """Blend opacity β: N(mean, std) clipped to [low, high] (clipped like the reference, not truncated,
    so about 16% of draws sit exactly at each bound with the defaults)."""
    if not low <= high:
        raise ValueError(f"sample_beta: need low <= high, got {low}, {high}")
    return float(np.clip(rng.normal(mean, std), low, high))


def blend_texture(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """x' = x·(1−M) + (1−β)·t·M + β·x·M, in normalised space.

    `image`, `texture`: (3, S, S) float32, ImageNet-normalised. `mask`: (S, S) bool, M.
    Returns a new (3, S, S) float32 array; pixels outside the mask are copied unchanged.
    """
    if image.shape != texture.shape or image.shape[1:] != mask.shape:
        raise ValueError(
            f"blend_texture: image {image.shape}, texture {texture.shape} and mask {mask.shape} "
            "must be (3, S, S), (3, S, S) and (S, S)"
        )
    if mask.dtype != bool:  # an integer mask would silently index rows instead of selecting pixels
        raise ValueError(f"blend_texture: mask must be bool, got {mask.dtype}")
    out = image.copy()
    out[:, mask] = (1.0 - beta) * texture[:, mask] + beta * image[:, mask]
    return out


# Smooth depth anomalies (our extension, not the paper's): amplitude range in ImageNet-normalised depth
# units (a part's depth image spans about 4.3 of them), and the blur that rounds the Perlin region's edges.
SMOOTH_AMPLITUDE = (0.2, 1.0)
SMOOTH_BLUR_FRACTION = 1.0 / 48.0  # Gaussian σ as a fraction of the image side
SMOOTH_MASK_LEVEL = 0.25  # a pixel is anomalous where the smoothed bump reaches this share of its peak


def smooth_height_anomaly(
    depth: np.ndarray, mask: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A dent or bump: a smoothed version of `mask` scaled by ±U(SMOOTH_AMPLITUDE), added to the depth
    image on the part only. UTAG's texture blend teaches sharp-edged, textured depth anomalies; a
    0.5-1.5 mm dent on a smooth surface looks nothing like them (docs/RESULTS.md, toy bricks).

    `depth`: (3, S, S) float32 normalised (3 equal channels). `mask`, `foreground`: (S, S) bool.
    Returns (new depth, the anomalous pixels: where the bump reaches SMOOTH_MASK_LEVEL of its peak).
    """
    size = depth.shape[1]
    sigma = max(1.0, size * SMOOTH_BLUR_FRACTION)
    bump = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) * foreground
    peak = float(bump.max())
    if peak <= 0.0:
        return depth, np.zeros_like(mask)
    bump /= peak
    amplitude = float(rng.uniform(*SMOOTH_AMPLITUDE)) * (1.0 if rng.random() < 0.5 else -1.0)
    return depth + amplitude * bump[None], bump >= SMOOTH_MASK_LEVEL


@dataclass(frozen=True)
class TextureAnomaly:
    """One texture-anomaly training sample.

    `rgb`, `depth`: (3, S, S) float32, ImageNet-normalised; the modality not selected is the input
    array itself (not a copy). `mask`: (S, S) bool pixel mask. `patch_mask`: (h, w) float32 in {0, 1},
    the focal-loss target. `beta`: blend opacity. `modality`: which images received the texture.
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    patch_mask: np.ndarray
    beta: float
    modality: AnomalyTarget


def texture_anomaly(
    rgb: np.ndarray,
    depth: np.ndarray,
    foreground: np.ndarray,
    textures: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    grid: tuple[int, int],
    beta_mean: float = 0.5,
    beta_std: float = 0.3,
    alpha: float = 1.0 / 3.0,
    modalities: tuple[str, ...] = ("rgb", "depth"),
    depth_anomaly: DepthAnomaly = "texture",
) -> TextureAnomaly:
    """Blend a random texture into the part, in RGB, depth or both (UTAG).

    `depth_anomaly`: what the depth image gets: "texture" (the paper's gray texture blend), "smooth" (a
    smooth dent or bump over the same region, `smooth_height_anomaly`) or "mixed" (either, 50/50 per sample).

    `rgb`, `depth`: (3, S, S) float32, ImageNet-normalised model inputs (depth: gray replicated 3×).
    `foreground`: (S, S) bool, True on the part. `textures`: RGB textures, each (H, W, 3) uint8.
    `grid`: (h, w) discriminator patch grid. `modalities`: the model's inputs; with one, every sample's
    texture goes into that one. The colour texture goes into RGB, its gray version into
    depth; both get the same augmentation ops and parameters (the reference re-draws them per image, so
    its two textures can differ geometrically; here they line up).
    Raises `EmptyForegroundError` if the foreground has no pixel.
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.shape[1] != rgb.shape[2]:
        raise ValueError(f"texture_anomaly: rgb must be (3, S, S), got {rgb.shape}")
    if depth.shape != rgb.shape:
        raise ValueError(f"texture_anomaly: depth {depth.shape} must match rgb {rgb.shape}")
    size = rgb.shape[1]
    if foreground.shape != (size, size):
        raise ValueError(f"texture_anomaly: foreground {foreground.shape} must be {(size, size)}")
    if len(textures) == 0:
        raise ValueError("texture_anomaly: no textures given")
    if len(grid) != 2 or min(grid) <= 0 or size % grid[0] or size % grid[1]:
        raise ValueError(f"texture_anomaly: grid {grid} must split the image size {size} into equal cells")

    texture = textures[int(rng.integers(len(textures)))]
    modality = choose_modalities(rng, alpha)
    if len(modalities) == 1:  # a single-modality model: the texture always goes where the model looks
        modality = cast(AnomalyTarget, modalities[0])
    ops = draw_texture_ops(rng)
    mask = perlin_mask((size, size), rng, foreground=foreground)
    beta = sample_beta(rng, beta_mean, beta_std)
    # Only the textures that get used are built: a third of the samples skip each one.
    if modality in ("both", "rgb"):
        rgb = blend_texture(rgb, augment_texture(texture, size, ops=ops), mask, beta)
    if depth_anomaly not in DEPTH_ANOMALIES:
        raise ValueError(f"texture_anomaly: depth_anomaly must be one of {DEPTH_ANOMALIES}, got {depth_anomaly!r}")
    if modality in ("both", "depth"):
        smooth = depth_anomaly == "smooth" or (depth_anomaly == "mixed" and rng.random() < 0.5)
        if smooth:
            depth, bump_mask = smooth_height_anomaly(depth, mask, foreground, rng)
            # The RGB texture (if any) covers `mask`; the smooth bump spreads a little beyond it.
            mask = bump_mask if modality == "depth" else mask | bump_mask
        else:
            depth = blend_texture(depth, augment_texture_gray(texture, size, ops=ops), mask, beta)
    return TextureAnomaly(
        rgb=rgb, depth=depth, mask=mask, patch_mask=patch_mask(mask, grid), beta=beta, modality=modality
    )
