"""Benchmark of service.preprocessing on a synthetic 800×800 part: stage timings, fill/resize order, plane fits.

Run from the repository root:  python benchmarks/bench_preprocessing.py [--repeats 30] [--size 256]
Prints tables and writes benchmarks/results/preprocessing.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.preprocessing import (
    PREPROCESSING_VERSION,
    PlaneFitError,
    PreprocessConfig,
    fill_holes,
    foreground_mask,
    normalise_depth,
    prepare_depth,
    prepare_rgb,
    preprocess_part,
    resize_mask,
    valid_points,
)
from service.preprocessing.plane import border_ransac_plane, fit_plane

RESULTS = Path(__file__).resolve().parent / "results" / "preprocessing.json"


def synthetic_part(
    size: int = 800, *, noise: float = 0.0002, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8, xyz (H, W, 3) float32 metres, true object mask (H, W) bool, true plane (4,)).

    A pinhole camera 0.6 m above a table tilted by ~8°, a 15 mm box and a 30 mm dome on it, 1 % random
    dropout, a few holes on the objects, and Gaussian noise of `noise` metres along each ray.
    """
    rng = np.random.default_rng(seed)
    focal = 3.0 * size  # ≈ 0.2 m field of view at 0.6 m, like MVTec 3D-AD
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays = np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], axis=-1)
    normal = np.array([0.12, -0.08, 1.0]) / np.linalg.norm([0.12, -0.08, 1.0])
    plane = np.array([*normal, normal[2] * 0.6])
    height = np.zeros((size, size))
    box = (slice(int(0.2 * size), int(0.45 * size)), slice(int(0.25 * size), int(0.7 * size)))
    height[box] = 0.015
    radius = 0.2 * size
    r2 = (u - 0.55 * size) ** 2 + (v - 0.68 * size) ** 2
    height = np.maximum(height, 0.03 * np.clip(1 - r2 / radius**2, 0, None))
    scale = (plane[3] - height) / (rays @ normal) + rng.normal(0.0, noise, height.shape)
    xyz = (rays * scale[..., None]).astype(np.float32)
    xyz[rng.uniform(size=height.shape) < 0.01] = 0
    for row, col in rng.integers(int(0.25 * size), int(0.4 * size), size=(5, 2)):
        xyz[row : row + 6, col + 100 : col + 106] = 0
    truth = height > 0.005
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[..., 0] = (u / size * 200).astype(np.uint8)
    rgb[..., 1] = np.where(truth, 180, 60)
    rgb[..., 2] = rng.integers(0, 256, height.shape, dtype=np.uint8)
    return rgb, xyz, truth, plane


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    fn()  # warm-up: first-call allocations and OpenCV dispatch
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    stats = {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}
    return stats, result


def stage_timings(rgb: np.ndarray, xyz: np.ndarray, config: PreprocessConfig, repeats: int) -> dict[str, Any]:
    size = config.image_size
    out: dict[str, Any] = {}

    def plane_and_foreground() -> np.ndarray:
        clean, valid = valid_points(xyz)
        plane, _ = fit_plane(clean, valid, config)
        return foreground_mask(clean, valid, plane, config)

    out["plane_foreground"], foreground = timed(plane_and_foreground, repeats)
    z = xyz[..., 2]
    out["normalise_fill"], depth = timed(lambda: fill_holes(normalise_depth(z, foreground), 2), repeats)
    out["resize"], _ = timed(
        lambda: (
            prepare_rgb(rgb, size, config.mean, config.std),
            prepare_depth(depth, size, config.mean, config.std),
            resize_mask(foreground, size),
        ),
        repeats,
    )
    out["total_preprocess_part"], part = timed(lambda: preprocess_part(rgb, xyz, config), repeats)
    out["plane_method"] = part.info["plane_method"]

    # Depth branch only, in both orders: (normalise → fill at H×W → resize) vs (normalise → resize → fill at S).
    def fill_then_resize() -> np.ndarray:
        return prepare_depth(fill_holes(normalise_depth(z, foreground), 2), size)

    def resize_then_fill() -> np.ndarray:
        small = cv2.resize(normalise_depth(z, foreground), (size, size), interpolation=cv2.INTER_LINEAR)
        return prepare_depth(fill_holes(small, 2), size)

    out["depth_fill_then_resize"], a = timed(fill_then_resize, repeats)
    out["depth_resize_then_fill"], b = timed(resize_then_fill, repeats)
    std = np.array(config.std, np.float32)[:, None, None]
    diff = np.abs(a - b)[0] * std[0]  # back to depth units [0, 1]
    out["order_difference"] = {
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
        "pixels_differing_over_0.01": float((diff > 0.01).mean()),
    }
    return out


def plane_error(found: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    cosine = float(np.clip(abs(found[:3] @ true[:3]), 0.0, 1.0))
    return float(np.degrees(np.arccos(cosine))), abs(float(found[3] - true[3])) * 1000


def plane_scenarios(config: PreprocessConfig) -> list[dict[str, Any]]:
    """How the plane fit behaves when corners lack points (and one case where a corner sees the object)."""
    _, base, truth, true_plane = synthetic_part()
    cases: dict[str, np.ndarray] = {"all corners valid": base}
    xyz = base.copy()
    xyz[:3, :3] = 0
    cases["top-left 3×3 patch empty"] = xyz
    xyz = base.copy()
    xyz[:60, :60] = 0
    xyz[-60:, :60] = np.nan
    cases["two corners empty (60×60, one NaN)"] = xyz
    xyz = base.copy()
    xyz[:, :40] = 0
    cases["left 40 columns empty (two corners)"] = xyz
    xyz = base.copy()
    # An object 15 mm high reaches into the top-left patch: every point there moves 15 mm towards the camera.
    xyz[:3, :3] *= np.float32((true_plane[3] - 0.015) / true_plane[3])
    cases["top-left patch on a 15 mm object (known limit)"] = xyz
    xyz = base.copy()
    xyz[:60, :60] = 0
    keep = np.zeros(base.shape[:2], bool)
    keep[100:-100, 100:-100] = True
    xyz[~keep] = 0
    cases["only the centre has points"] = xyz
    rows = []
    for name, cloud in cases.items():
        row: dict[str, Any] = {"case": name}
        clean, valid = valid_points(cloud)
        start = time.perf_counter()
        try:
            plane, method = fit_plane(clean, valid, config)
        except PlaneFitError as exc:
            row.update(method="PlaneFitError", error=str(exc)[:120])
            rows.append(row)
            continue
        row["fit_ms"] = (time.perf_counter() - start) * 1000
        angle, offset = plane_error(plane, true_plane)
        fg = foreground_mask(clean, valid, plane, config)
        iou = float((fg & truth).sum() / max((fg | truth).sum(), 1))
        row.update(method=method, angle_deg=angle, offset_mm=offset, foreground_iou=iou)
        if method == "corners":  # what the fallback would have found on the same cloud
            forced = border_ransac_plane(clean, valid, config)
            row["ransac_angle_deg"], row["ransac_offset_mm"] = plane_error(forced, true_plane)
        rows.append(row)
    return rows


def rgb_filter_vs_pil(path: Path | None, size: int) -> dict[str, Any] | None:
    """Mean/max |INTER_AREA − PIL antialiased bilinear| (in [0, 1]) on a real image, e.g. an MVTec 3D-AD
    tire part (`--pil-image`); None, with a line saying why, when there is none or PIL is missing."""
    if path is None:
        print("\nRGB INTER_AREA vs PIL: skipped (pass --pil-image PATH, e.g. MVTec 3D-AD tire/train/good/rgb/000.png)")
        return None
    try:
        from PIL import Image
    except ImportError:
        print("\nRGB INTER_AREA vs PIL: skipped (Pillow is not installed)")
        return None
    if not path.is_file():
        raise SystemExit(f"--pil-image {path}: no such file")
    image = Image.open(path).convert("RGB")
    ours = cv2.resize(np.asarray(image), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    theirs = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    diff = np.abs(ours - theirs) / 255
    return {
        "image": path.name,  # the name only: no path of this machine in the results
        "hw": list(np.asarray(image).shape[:2]),
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="model input side S")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--pil-image",
        type=Path,
        default=None,
        help="a real RGB image to compare OpenCV's INTER_AREA with PIL's antialiased bilinear on "
        "(e.g. MVTec 3D-AD tire/train/good/rgb/000.png); default: none, the comparison is skipped",
    )
    args = parser.parse_args()
    config = PreprocessConfig(image_size=args.size)
    rgb, xyz, _, _ = synthetic_part(800)
    missing_corner = xyz.copy()
    missing_corner[:3, :3] = 0

    timings = stage_timings(rgb, xyz, config, args.repeats)
    fallback = stage_timings(rgb, missing_corner, config, args.repeats)
    print(f"preprocessing v{PREPROCESSING_VERSION}, 800×800 → {args.size}, {args.repeats} repeats")
    print(f"{'stage':28s} {'corners':>18s} {'border_ransac':>18s}   (median / p95 ms)")
    for key, value in timings.items():
        if isinstance(value, dict) and "median_ms" in value:
            other = fallback[key]
            print(
                f"{key:28s} {value['median_ms']:8.2f} / {value['p95_ms']:6.2f}"
                f"   {other['median_ms']:8.2f} / {other['p95_ms']:6.2f}"
            )
    print(f"fill→resize vs resize→fill, depth at S: {timings['order_difference']}")

    scenarios = plane_scenarios(config)
    print(f"\n{'plane-fit case':52s} {'method':14s} {'angle°':>8s} {'offset mm':>9s} {'fg IoU':>7s} {'ms':>6s}")
    for row in scenarios:
        if "angle_deg" in row:
            print(
                f"{row['case']:52s} {row['method']:14s} {row['angle_deg']:8.3f} {row['offset_mm']:9.3f} "
                f"{row['foreground_iou']:7.3f} {row['fit_ms']:6.2f}"
            )
        else:
            print(f"{row['case']:52s} {row['method']}")
    pil = rgb_filter_vs_pil(args.pil_image, args.size)
    if pil:
        print(f"\nRGB INTER_AREA vs PIL bilinear (antialiased), {args.pil_image}: {pil}")

    result = {
        "version": PREPROCESSING_VERSION,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_preprocessing.py", *sys.argv[1:]]),
        "machine": machine(),
        "input_hw": [800, 800],
        "image_size": args.size,
        "repeats": args.repeats,
        "timings_corners": timings,
        "timings_border_ransac": fallback,
        "plane_fit_scenarios": scenarios,
        "rgb_filter_vs_pil": pil,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
