"""Synthetic part categories: height profile and procedural albedo texture of each object, in its own frame."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# All lengths in metres. An object lives in its own frame (p, q): origin at its centre, on the table plane.
HeightFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
AlbedoFn = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Category:
    """One kind of part: its shape and its texture.

    `height(p, q)`: object-frame coordinates, any equal shapes, float64 metres → height above the table,
    same shape, float64 metres, exactly 0 off the object. `albedo(rng, p, q)`: a square (N, N) texel grid
    of object-frame coordinates → (N, N, 3) float32 reflectance in [0, 1], RGB.
    `extent`: half-width of the square object-frame window (m) that holds the whole object.
    """

    name: str
    description: str
    extent: float
    height: HeightFn
    albedo: AlbedoFn


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, C1-smooth in between."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: float, octaves: int = 3, persistence: float = 0.5
) -> np.ndarray:
    """Smooth random field, zero mean and unit standard deviation, (H, W) float32.

    `cells`: number of random lattice cells across the shorter side at the coarsest octave; each octave
    doubles it. Cubic upsampling of random lattices is cheap and deterministic.
    """
    h, w = shape
    total = np.zeros(shape, dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        n = max(cells * 2**octave, 1.0)
        gh = max(round(n * h / min(h, w)), 1) + 2
        gw = max(round(n * w / min(h, w)), 1) + 2
        lattice = rng.standard_normal((gh, gw)).astype(np.float32)
        total += amplitude * cv2.resize(lattice, (w, h), interpolation=cv2.INTER_CUBIC)
        amplitude *= persistence
    std = float(total.std())
    return (total - total.mean()) / (std if std > 0 else 1.0)


def _jitter_colour(rng: np.random.Generator, base: tuple[float, float, float], spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32), 0, 1)


def _texels(p: np.ndarray) -> int:
    return int(p.shape[0])


# --- puck: a machined disc with a bevelled rim and a printed ring (the small, easy default) --------------

PUCK_RADIUS = 0.050
PUCK_HEIGHT = 0.018
PUCK_BEVEL = 0.004


def puck_height(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    rho = np.hypot(p, q)
    # A slightly crowned top (+1.5 mm at the centre) so that the top is not one flat plane.
    crown = 0.0015 * np.clip(1.0 - (rho / PUCK_RADIUS) ** 2, 0.0, None)
    return (PUCK_HEIGHT + crown) * smoothstep((PUCK_RADIUS - rho) / PUCK_BEVEL)


def puck_albedo(rng: np.random.Generator, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = _texels(p)
    rho = np.hypot(p, q)
    base = _jitter_colour(rng, (0.22, 0.28, 0.36), 0.03)
    shade = 0.035 * fractal_noise(rng, (n, n), cells=3, octaves=2) + 0.02 * fractal_noise(
        rng, (n, n), cells=n / 6, octaves=1
    )
    # Turning grooves: faint concentric rings, a 3 mm period stays above the texel pitch at 128 px.
    shade += 0.015 * np.sin(2 * np.pi * rho / 0.003).astype(np.float32)
    albedo = base[None, None, :] * (1.0 + shade[..., None])
    # A printed ring and one tick mark: structure a model must learn to expect on every good part.
    ring_r = rng.uniform(0.62, 0.78) * PUCK_RADIUS
    ring_w = rng.uniform(0.0015, 0.0025)
    angle = np.arctan2(q, p)
    tick = (np.abs(angle) < 0.06) & (rho > ring_r) & (rho < ring_r + 0.008)
    printed = (np.abs(rho - ring_r) < ring_w / 2) | tick
    albedo[printed] = _jitter_colour(rng, (0.86, 0.84, 0.76), 0.02)
    return np.clip(albedo, 0, 1).astype(np.float32)


# --- block: a rounded rectangular box with soft edges and a terracotta mottle ----------------------------

BLOCK_HALF = (0.056, 0.036)
BLOCK_CORNER = 0.012
BLOCK_HEIGHT = 0.026
BLOCK_BEVEL = 0.006


def block_height(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    # Signed distance to a rounded rectangle (negative inside), then a soft bevel over BLOCK_BEVEL.
    dx = np.abs(p) - (BLOCK_HALF[0] - BLOCK_CORNER)
    dy = np.abs(q) - (BLOCK_HALF[1] - BLOCK_CORNER)
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    sd = outside + np.minimum(np.maximum(dx, dy), 0) - BLOCK_CORNER
    crown = 0.002 * np.clip(1 - (p / BLOCK_HALF[0]) ** 2, 0, None) * np.clip(1 - (q / BLOCK_HALF[1]) ** 2, 0, None)
    return (BLOCK_HEIGHT + crown) * smoothstep(-sd / BLOCK_BEVEL)


def block_albedo(rng: np.random.Generator, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = _texels(p)
    base = _jitter_colour(rng, (0.64, 0.32, 0.21), 0.04)
    mottle = 0.08 * fractal_noise(rng, (n, n), cells=4, octaves=3)
    albedo = base[None, None, :] * (1.0 + mottle[..., None])
    # Dark grit: the tail of a fine noise field, a few percent of the surface.
    grit = fractal_noise(rng, (n, n), cells=n / 5, octaves=1) > 1.9
    albedo[grit] *= 0.55
    return np.clip(albedo, 0, 1).astype(np.float32)


# --- bagel: a torus with a browned crown and seeds; the table shows through its hole ---------------------

BAGEL_MAJOR = 0.036
BAGEL_TUBE = 0.018
BAGEL_HEIGHT = 0.024


def bagel_height(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    d = np.abs(np.hypot(p, q) - BAGEL_MAJOR) / BAGEL_TUBE
    # An elliptic tube section: vertical walls at both rims, which the sensor cannot see (dropouts).
    return BAGEL_HEIGHT * np.sqrt(np.clip(1.0 - d * d, 0.0, None))


def bagel_albedo(rng: np.random.Generator, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = _texels(p)
    base = _jitter_colour(rng, (0.80, 0.57, 0.30), 0.04)
    crown = np.clip(1.0 - np.abs(np.hypot(p, q) - BAGEL_MAJOR) / BAGEL_TUBE, 0, 1).astype(np.float32)
    shade = 1.0 - 0.38 * crown + 0.06 * fractal_noise(rng, (n, n), cells=5, octaves=3)
    albedo = base[None, None, :] * shade[..., None]
    # Seeds: small light ellipses scattered over the crown, drawn in texel units.
    texel = float(p[0, 1] - p[0, 0])
    seed_colour = tuple(float(c) for c in _jitter_colour(rng, (0.93, 0.87, 0.70), 0.03))
    for _ in range(int(rng.integers(14, 26))):
        angle = rng.uniform(0, 2 * np.pi)
        radius = BAGEL_MAJOR + rng.uniform(-0.55, 0.55) * BAGEL_TUBE
        cx = (radius * np.cos(angle) - p[0, 0]) / texel
        cy = (radius * np.sin(angle) - q[0, 0]) / texel
        axes = (max(0.0013 / texel, 0.6), max(0.0006 / texel, 0.5))
        box = ((float(cx), float(cy)), (2 * axes[0], 2 * axes[1]), float(rng.uniform(0, 180)))
        cv2.ellipse(albedo, box, seed_colour, thickness=-1)
    return np.clip(albedo, 0, 1).astype(np.float32)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("puck", "disc, 100 mm × 18 mm, bevelled rim, printed ring (small and easy)", 0.056,
                 puck_height, puck_albedo),
        Category("block", "rounded box, 112 × 72 × 26 mm, soft edges, mottled terracotta", 0.070,
                 block_height, block_albedo),
        Category("bagel", "torus, 108 mm across, 24 mm tall, hole shows the table, seeds", 0.058,
                 bagel_height, bagel_albedo),
    )
}  # fmt: skip
DEFAULT_CATEGORY = "puck"


def table_albedo(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Matte grey-beige table, (H, W, 3) float32 in [0, 1], in image space (the table never moves)."""
    base = _jitter_colour(rng, (0.70, 0.69, 0.65), 0.04)
    shade = 0.05 * fractal_noise(rng, shape, cells=3, octaves=3) + 0.015 * fractal_noise(
        rng, shape, cells=min(shape) / 4, octaves=1
    )
    return np.clip(base[None, None, :] * (1.0 + shade[..., None]), 0, 1).astype(np.float32)
