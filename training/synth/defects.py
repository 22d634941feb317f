"""Synthetic defects: what each kind changes (depth, colour or both), drawn on the object's top surface."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.synth.scene import Scene
from training.synth.shapes import fractal_noise

# Name → (gt class code, modality it is visible in). Codes count down from 255 like MVTec 3D-AD's masks.
DEFECTS: dict[str, tuple[int, str]] = {
    "dent": (255, "depth"),
    "bump": (254, "depth"),
    "stain": (253, "rgb"),
    "crack": (252, "both"),
    "hole": (251, "both"),
}
# Stain colours (RGB reflectance): oil, rust, chalk dust, green paint.
STAIN_COLOURS = ((0.10, 0.08, 0.06), (0.62, 0.36, 0.14), (0.86, 0.84, 0.78), (0.30, 0.48, 0.26))
MIN_DEFECT_PX = 2.5  # smallest defect radius in pixels, so that tiny test images still show every defect


class DefectPlacementError(RuntimeError):
    """No place on the object's top surface could hold the defect."""


@dataclass(frozen=True)
class DefectEdit:
    """A defect as edits of a scene's layers, all (H, W) image space.

    `mask`: bool, the ground truth (exactly the pixels whose height or colour the defect changes).
    `height_delta`: float64 m added to the height (None = geometry untouched). `alpha`: float32 in [0, 1],
    weight of `colour` ((3,) float32 RGB reflectance) over the albedo (None = colour untouched).
    `missing`: bool, points the sensor loses inside the defect (None = none).
    """

    kind: str
    mask: np.ndarray
    height_delta: np.ndarray | None = None
    alpha: np.ndarray | None = None
    colour: np.ndarray | None = None
    missing: np.ndarray | None = None


def make_defect(kind: str, scene: Scene, rng: np.random.Generator) -> DefectEdit:
    """Draw one defect of `kind` at a random spot of the object's top. Deterministic in `rng`'s state."""
    if kind not in DEFECTS:
        raise KeyError(f"unknown defect kind {kind!r}; expected one of {list(DEFECTS)}")
    return _MAKERS[kind](scene, rng)


def _top(scene: Scene, min_height: float) -> np.ndarray:
    """High enough that the defect stays ≥ 5 mm above the table: every defect is clipped to this."""
    top: np.ndarray = scene.height >= min_height
    return top


def _place(scene: Scene, rng: np.random.Generator, radius_px: float, top: np.ndarray) -> tuple[float, float]:
    """A random pixel (x, y) whose disc of `radius_px` lies on flat, observed `top` surface.

    Flat (not on a wall) and observed (not in a dropout) so that the defect shows; the radius shrinks
    when no spot is large enough (thin bagel crowns, big dents).
    """
    spot = (top & (scene.slope < 0.7) & ~scene.dropout).astype(np.uint8)
    for shrink in (1.0, 0.7, 0.5, 0.3, 0.0):
        r = int(np.ceil(radius_px * shrink))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        ys, xs = np.nonzero(cv2.erode(spot, kernel))
        if len(ys):
            k = int(rng.integers(len(ys)))
            return float(xs[k]), float(ys[k])
    raise DefectPlacementError(
        f"no observed top surface for a defect on {scene.spec.category} part (seed {scene.spec.seed})"
    )


def _ellipse_radius(
    scene: Scene, rng: np.random.Generator, centre: tuple[float, float], axes_px: tuple[float, float]
) -> np.ndarray:
    """(H, W) float64 normalised elliptic radius around `centre` (1 on the rim), random orientation."""
    h, w = scene.height.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    du, dv = u - centre[0], v - centre[1]
    along = np.cos(angle) * du + np.sin(angle) * dv
    across = -np.sin(angle) * du + np.cos(angle) * dv
    r: np.ndarray = np.hypot(along / axes_px[0], across / axes_px[1])
    return r


def _blob_axes(scene: Scene, rng: np.random.Generator, radius_m: tuple[float, float]) -> tuple[float, float]:
    major = max(rng.uniform(*radius_m) * scene.px_per_metre, MIN_DEFECT_PX)
    return major, max(major * rng.uniform(0.6, 1.0), MIN_DEFECT_PX)


def _relief(scene: Scene, rng: np.random.Generator, sign: float) -> DefectEdit:
    """Dent (sign −1) or bump (+1): a paraboloid of 1.5–3.5 mm over a 4–9 mm radius; colour untouched."""
    depth = rng.uniform(0.0015, 0.0035)
    top = _top(scene, depth + 0.007)
    axes = _blob_axes(scene, rng, (0.004, 0.009))
    r = _ellipse_radius(scene, rng, _place(scene, rng, axes[0], top), axes)
    mask = (r < 1.0) & top
    delta = np.where(mask, sign * depth * (1.0 - r * r), 0.0)
    return DefectEdit("dent" if sign < 0 else "bump", mask, height_delta=delta)


def _dent(scene: Scene, rng: np.random.Generator) -> DefectEdit:
    return _relief(scene, rng, -1.0)


def _bump(scene: Scene, rng: np.random.Generator) -> DefectEdit:
    return _relief(scene, rng, +1.0)


def _stain(scene: Scene, rng: np.random.Generator) -> DefectEdit:
    """A blotch of foreign colour with a ragged outline; geometry untouched."""
    top = _top(scene, 0.007)
    axes = _blob_axes(scene, rng, (0.004, 0.009))
    centre = _place(scene, rng, axes[0], top)
    r = _ellipse_radius(scene, rng, centre, axes)
    ragged = fractal_noise(rng, r.shape, cells=max(min(r.shape) / (2 * axes[0]), 1.0), octaves=2)
    mask = (r + 0.18 * ragged < 1.0) & (r < 1.4) & top
    # A foreign colour far from the part's own (mean albedo under the stain), so it always shows.
    own = scene.albedo[mask].mean(axis=0) if mask.any() else scene.albedo[int(centre[1]), int(centre[0])]
    far = [c for c in STAIN_COLOURS if np.linalg.norm(np.asarray(c) - own) > 0.3]
    base = far[int(rng.integers(len(far)))] if far else STAIN_COLOURS[0]
    colour = np.clip(np.asarray(base, np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32), 0, 1)
    alpha = (mask * rng.uniform(0.5, 0.8)).astype(np.float32)
    return DefectEdit("stain", mask, alpha=alpha, colour=colour)


def _crack(scene: Scene, rng: np.random.Generator) -> DefectEdit:
    """A wandering groove 1.2–2.4 mm wide, 2–3.5 mm deep, dark, its deepest line partly unseen."""
    depth = rng.uniform(0.002, 0.0035)
    top = _top(scene, depth + 0.007)
    ppm = scene.px_per_metre
    # At least 1.5 px: the groove then has walls beside its unseen core even in tiny images.
    half_width = max(rng.uniform(0.0006, 0.0012) * ppm, 1.5)
    start = _place(scene, rng, half_width + 1, top)
    # A random walk from the start in both directions, steps of 1.5 mm, gently turning.
    heading = rng.uniform(0, 2 * np.pi)
    points = [np.array(start)]
    for direction in (1.0, -1.0):
        pos, ang = np.array(start), heading + (0 if direction > 0 else np.pi)
        for _ in range(int(rng.integers(4, 10))):
            ang += rng.normal(0, 0.35)
            pos = pos + 0.0015 * ppm * np.array([np.cos(ang), np.sin(ang)])
            points.insert(len(points) if direction > 0 else 0, pos)
    line = np.full(top.shape, 255, np.uint8)
    shift = 4  # sub-pixel vertices
    pts = np.round(np.array(points) * (1 << shift)).astype(np.int32)
    cv2.polylines(line, [pts], isClosed=False, color=0, thickness=1, lineType=cv2.LINE_8, shift=shift)
    dist = cv2.distanceTransform(line, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    mask = (dist < half_width) & top
    delta = np.where(mask, -depth * (1.0 - (dist / half_width) ** 2), 0.0)
    # The core is lost in stretches of a few millimetres, not as a whole.
    gaps = fractal_noise(rng, top.shape, cells=min(top.shape) / max(0.003 * ppm, 2.0), octaves=1) > 0
    missing = mask & (dist < 0.35 * half_width) & gaps
    colour = np.array([0.06, 0.05, 0.04], np.float32)
    alpha = (mask * rng.uniform(0.7, 0.9)).astype(np.float32)
    return DefectEdit("crack", mask, height_delta=delta, alpha=alpha, colour=colour, missing=missing)


def _hole(scene: Scene, rng: np.random.Generator) -> DefectEdit:
    """A round hole 2–4.5 mm in radius: a dark funnel whose core the sensor cannot see into."""
    depth = 0.004
    top = _top(scene, depth + 0.007)
    radius = max(rng.uniform(0.002, 0.0045) * scene.px_per_metre, MIN_DEFECT_PX)
    r = _ellipse_radius(scene, rng, _place(scene, rng, radius, top), (radius, radius))
    mask = (r < 1.0) & top
    ramp = np.clip((1.0 - r) / 0.4, 0.0, 1.0)  # 0 at the rim, 1 from 0.6 R inwards
    delta = np.where(mask, -depth * ramp, 0.0)
    missing = mask & (r < 0.6)
    colour = np.array([0.03, 0.03, 0.03], np.float32)
    alpha = (mask * (0.35 + 0.6 * ramp)).astype(np.float32)
    return DefectEdit("hole", mask, height_delta=delta, alpha=alpha, colour=colour, missing=missing)


_MAKERS = {"dent": _dent, "bump": _bump, "stain": _stain, "crack": _crack, "hole": _hole}


def apply_defect(scene: Scene, edit: DefectEdit | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The scene's (height, albedo, missing) with `edit` applied; the scene's own arrays when it is None."""
    if edit is None:
        return scene.height, scene.albedo, None
    height = scene.height if edit.height_delta is None else scene.height + edit.height_delta
    albedo = scene.albedo
    if edit.alpha is not None and edit.colour is not None:
        # Blend only inside the mask: outside, the albedo stays bit-identical to the clean part.
        albedo = albedo.copy()
        a = edit.alpha[edit.mask][:, None]
        albedo[edit.mask] = albedo[edit.mask] * (1.0 - a) + edit.colour[None, :] * a
    return height, albedo, edit.missing
