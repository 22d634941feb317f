"""Deterministic synthetic parts: a tilted table plane seen by a pinhole camera, with a box on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticPart:
    """`rgb`: (H, W, 3) uint8. `xyz`: (H, W, 3) float32, metres, 0 = no point. `box`: (H, W) bool, the
    pixels that see the box top. `plane`: (4,) float64 true table plane [n, d], unit n away from the
    camera, n·p = d."""

    rgb: np.ndarray
    xyz: np.ndarray
    box: np.ndarray
    plane: np.ndarray


def table_plane(tilt: tuple[float, float], distance: float) -> np.ndarray:
    """Plane through (0, 0, distance) with normal ∝ (tilt_x, tilt_y, 1)."""
    normal = np.array([tilt[0], tilt[1], 1.0])
    normal /= np.linalg.norm(normal)
    return np.array([*normal, normal[2] * distance])


def make_part(
    height: int = 40,
    width: int = 48,
    *,
    tilt: tuple[float, float] = (0.15, -0.1),
    distance: float = 0.5,
    box_rows: tuple[int, int] = (12, 28),
    box_cols: tuple[int, int] = (14, 34),
    box_height: float = 0.02,
    hole: tuple[int, int, int] | None = (18, 20, 2),
    empty_corner: int = 0,
    noise: float = 0.0,
    seed: int = 0,
) -> SyntheticPart:
    """A table plane with a box whose top is `box_height` above it, seen from `distance` metres.

    `box_rows`/`box_cols` are pixel ranges [start, stop). `hole` (row, col, side) removes a side×side
    patch of the box. `empty_corner` > 0 removes that many pixels square at the top-left corner. `noise`:
    Gaussian noise (metres) along each viewing ray, drawn from `seed`.
    """
    focal = 5.0 * width  # the field of view spans about a fifth of the distance
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - (width - 1) / 2) / focal, (v - (height - 1) / 2) / focal, np.ones_like(u)], axis=-1)
    plane = table_plane(tilt, distance)
    box = np.zeros((height, width), bool)
    box[box_rows[0] : box_rows[1], box_cols[0] : box_cols[1]] = True
    offset = np.where(box, plane[3] - box_height, plane[3])
    scale = offset / (rays @ plane[:3])
    if noise:
        scale = scale + np.random.default_rng(seed).normal(0.0, noise, scale.shape)
    xyz = (rays * scale[..., None]).astype(np.float32)
    if hole is not None:
        r, c, side = hole
        xyz[r : r + side, c : c + side] = 0
    if empty_corner:
        xyz[:empty_corner, :empty_corner] = 0
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (u * 5) % 256
    rgb[..., 1] = (v * 7) % 256
    rgb[..., 2] = np.where(box, 200, 40)
    return SyntheticPart(rgb=rgb, xyz=xyz, box=box, plane=plane)
