"""Score good parts as the line would see them after a shift (brighter light, a tilted camera, a new surface
texture), once, with an exported model through the service's engine; `bench_drift.py` replays the cached scores.

Run from the repository root:
    python benchmarks/drift_scores.py --model models/demo --data out/puck960 --category puck \
        --out benchmarks/results/drift_scores.json
Each good part of the test split (unseen in training and calibration) is scored as it is and under each shift;
the validation split's good parts are scored too (they are what the model was calibrated on). Per part the
record keeps the score and the share of map pixels above the model's pixel threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.engine import Engine
from training.scoring.engine import open_engine

Shift = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# Each shift at two strengths. Brightness: the RGB image × the factor (clipped), a brighter lamp or a longer
# exposure. Tilt: the cloud rotated about the camera's x axis through its centroid, a knocked camera mount.
# Texture: the share of a seeded grain blended into the RGB, a new batch of material.
BRIGHTNESS = (1.3, 1.6)
TILT_DEG = (3.0, 6.0)
TEXTURE_ALPHA = (0.1, 0.3)


def brightness(factor: float) -> Shift:
    def shift(rgb: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8), xyz

    return shift


def tilt(degrees: float) -> Shift:
    return lambda rgb, xyz: (rgb, _rotated(xyz, degrees))


def _rotated(xyz: np.ndarray, degrees: float) -> np.ndarray:
    """`xyz`: (H, W, 3) float32 metres, 0 = no point; the points are rotated, the missing ones stay 0."""
    valid = np.isfinite(xyz).all(axis=2) & (np.abs(xyz).sum(axis=2) > 0)
    points = xyz[valid].astype(np.float64)
    centre = points.mean(axis=0)
    a = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    out = np.zeros_like(xyz)
    out[valid] = ((points - centre) @ rot.T + centre).astype(xyz.dtype)
    return out


def texture(alpha: float) -> Shift:
    """A fine oriented grain (sinusoid + seeded noise, the same for every part) blended into the image."""

    def shift(rgb: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        noise = np.random.default_rng(7).normal(0.0, 1.0, (h, w)).astype(np.float32)
        grain = 0.5 + 0.35 * np.sin((xx * 0.9 + yy * 0.4) / 2.0) + 0.15 * noise
        grain = np.clip(grain * 255.0, 0, 255)[..., None]
        out = (1 - alpha) * rgb.astype(np.float32) + alpha * grain
        return np.clip(out, 0, 255).astype(np.uint8), xyz

    return shift


SHIFTS: dict[str, Shift] = {
    **{f"brightness x{f:g}": brightness(f) for f in BRIGHTNESS},
    **{f"tilt {d:g} deg": tilt(d) for d in TILT_DEG},
    **{f"texture {a:g}": texture(a) for a in TEXTURE_ALPHA},
}


def _parts(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    limits = DecodeLimits()
    out = []
    for rgb_path in sorted((folder / "rgb").glob("*.png")):
        xyz_path = folder / "xyz" / f"{rgb_path.stem}.tiff"
        out.append((decode_rgb(rgb_path.read_bytes(), limits), decode_xyz(xyz_path.read_bytes(), limits)))
    return out


def _score(engine: Engine, parts: list[tuple[np.ndarray, np.ndarray]], shift: Shift | None) -> list[list[float]]:
    """Per part: [score, share of map pixels above the pixel threshold]."""
    rows = []
    for rgb, xyz in parts:
        if shift is not None:
            rgb, xyz = shift(rgb, xyz)
        p = engine.predict(rgb, xyz)
        rows.append([round(p.score, 6), round(p.defect_area_fraction, 6)])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = args.data / args.category
    good = _parts(root / "test" / "good")
    validation = _parts(root / "validation" / "good")
    started = time.perf_counter()
    with open_engine(args.model) as engine:
        model = engine.get(None)
        out: dict[str, Any] = {
            "model": {"name": model.manifest.name, "version": model.manifest.version},
            "data": f"{args.data.name}/{args.category}",
            "threshold": model.threshold,
            "pixel_threshold": model.manifest.pixel_threshold,
            "shifts": list(SHIFTS),
            "validation": _score(engine, validation, None),
            "stable": _score(engine, good, None),
        }
        out["shifted"] = {}
        for name, shift in SHIFTS.items():
            out["shifted"][name] = _score(engine, good, shift)
            print(f"{name}: scored {len(good)} parts ({time.perf_counter() - started:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
