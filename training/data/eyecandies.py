"""Eyecandies (Bonfiglioli et al., ACCV 2022) as published: read one sample, back-project its depth.

The published layout, one folder per category (the download names it without spaces, e.g. `CandyCane`):

    <Category>/{train,val,test_public,test_private}/data/<id>_<item>.<ext>

`<id>` is the sample index zero-padded to the split's width (`000`…`999` in train, `00`…`49` in
test_public). Items used here: `image_0`…`image_5` (8-bit RGB PNG; 5 = global lighting, 0 = all four
spotlights, 1-4 = one spotlight each), `depth` (16-bit gray PNG, min–max normalised to 0…65535),
`info_depth` (YAML `normalization: {min, max}` in metres), `pose` (TXT, 4×4 camera-to-world matrix) and,
in the labelled splits, `mask` plus the per-type `bumps_mask`, `dents_mask`, `colors_mask`,
`normals_mask` (8-bit gray, non-zero = anomalous) and `metadata` (YAML). What was checked where is listed
in docs/RESULTS.md ("Eyecandies").

Everything here is a pure function of the files it is given; writing our layout is
`training.data.convert_eyecandies`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

# The one camera of the data set: focal length in pixels, principal point at (W/2, H/2) (the data set's
# own depth-to-point-cloud stage and M3DM's converter both hard-code these).
FOCAL_LENGTH = 711.11
DEPTH_SCALE = 65535.0  # the depth PNG spans 0…65535 between info_depth's min and max
LIGHTS = range(6)
# image_5, global lighting: the paper's "environment light" (docs/RESULTS.md#eyecandies-paper-41-tables-4-15-16).
GLOBAL_LIGHT = 5
# Published split → our split. test_private has no labels and is skipped.
SPLITS: dict[str, str] = {"train": "train", "val": "validation", "test_public": "test"}
UNLABELLED_SPLITS = ("test_private",)
# Per-type ground-truth masks; the dominant one names the defect folder (bumps_mask → test/bumps).
DEFECT_TYPES = ("bumps", "dents", "colors", "normals")
_SAMPLE_FILE = re.compile(r"^(\d+)_(.+)$")


class EyecandiesError(ValueError):
    """A file of the published data set is missing or malformed; the message names it."""


@dataclass(frozen=True)
class EyecandiesPart:
    """One sample, converted. `rgb` (H, W, 3) uint8 RGB; `xyz` (H, W, 3) float32 metres, 0 = no point;
    `gt` (H, W) bool, None in unlabelled splits; `defect` "good", one of DEFECT_TYPES, or None (unlabelled);
    `defect_pixels` pixel count per type (empty for good parts)."""

    sample_id: str
    rgb: np.ndarray
    xyz: np.ndarray
    gt: np.ndarray | None
    defect: str | None
    defect_pixels: dict[str, int]


def normalise_name(name: str) -> str:
    """Category names compare case-, space-, dash- and underscore-insensitively ("Candy Cane" = "candy_cane")."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def find_category(src: Path, category: str) -> Path:
    """The category folder under `src` (or `src` itself when it is that category's folder)."""
    src = Path(src)
    if not src.is_dir():
        raise EyecandiesError(f"--src {src} is not a folder")
    wanted = normalise_name(category)
    if normalise_name(src.name) == wanted and (src / "train").is_dir():
        return src
    found = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in found:
        if normalise_name(d.name) == wanted:
            return d
    names = ", ".join(d.name for d in found) or "none"
    raise EyecandiesError(f"no category {category!r} under {src} (folders found: {names})")


def sample_ids(split_dir: Path) -> list[str]:
    """Sample ids found in `split_dir/data`, sorted numerically. Raises when the folder is missing or empty."""
    data = Path(split_dir) / "data"
    if not data.is_dir():
        raise EyecandiesError(f"missing folder {data}")
    ids = {m.group(1) for p in data.iterdir() if (m := _SAMPLE_FILE.match(p.name)) and p.is_file()}
    if not ids:
        raise EyecandiesError(f"{data} holds no <id>_<item> files")
    return sorted(ids, key=int)


def item_path(split_dir: Path, sample_id: str, item: str, ext: str) -> Path:
    """Path of one item; raises naming it when it does not exist."""
    path = Path(split_dir) / "data" / f"{sample_id}_{item}.{ext}"
    if not path.is_file():
        raise EyecandiesError(f"missing file {path}")
    return path


def read_png(path: Path, *, dtype: type, channels: int) -> np.ndarray:
    """A PNG as stored, checked for bit depth and channel count: (H, W) for 1 channel, else (H, W, C) BGR."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EyecandiesError(f"cannot decode PNG {path} ({data.size} bytes)")
    got = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != dtype or got != channels:
        bits = image.dtype.itemsize * 8
        want = np.dtype(dtype).itemsize * 8
        raise EyecandiesError(f"{path} is a {bits}-bit, {got}-channel PNG; expected {want}-bit with {channels}")
    return image


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EyecandiesError(f"cannot read YAML {path}: {exc}") from exc


def read_normalisation(path: Path) -> tuple[float, float]:
    """(min, max) in metres from an info_depth YAML (`normalization: {min: …, max: …}`)."""
    data = read_yaml(path)
    try:
        low, high = float(data["normalization"]["min"]), float(data["normalization"]["max"])
    except (TypeError, KeyError, ValueError) as exc:
        raise EyecandiesError(f"{path} lacks numeric normalization.min / normalization.max") from exc
    if not (np.isfinite(low) and np.isfinite(high) and high >= low):
        raise EyecandiesError(f"{path}: normalization min {low} / max {high} are not finite with max ≥ min")
    return low, high


def metric_depth(png: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) float64 metres: png / 65535 · (max − min) + min (the data set's own conversion)."""
    return png.astype(np.float64) / DEPTH_SCALE * (high - low) + low


def read_pose(path: Path) -> np.ndarray:
    """(4, 4) float64 camera-to-world matrix from a pose TXT, checked to be a rigid transform."""
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise EyecandiesError(f"cannot read pose {path}: {exc}") from exc
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise EyecandiesError(f"pose {path} is not a finite 4×4 matrix (shape {pose.shape})")
    rotation = pose[:3, :3]
    if not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(
        rotation @ rotation.T, np.eye(3), atol=1e-4
    ):
        raise EyecandiesError(f"pose {path} is not a rigid transform (rotation + translation)")
    return pose


def back_project(depth: np.ndarray, focal_length: float = FOCAL_LENGTH, pose: np.ndarray | None = None) -> np.ndarray:
    """Organized point cloud (H, W, 3) float32 from metric z-depth (H, W).

    Pixel (u, v) (column, row) looks along ((u − W/2)/f, (v − H/2)/f, 1) in the camera frame (x right,
    y down, z forward), so its point is depth · that ray. With `pose` (camera-to-world) the points are
    moved into the world frame: p_world = R · p_cam + t. Pixels with depth ≤ 0 or non-finite have no point
    and are written as (0, 0, 0), the MVTec 3D-AD convention.
    """
    height, width = depth.shape
    u = (np.arange(width, dtype=np.float64) - width / 2) / focal_length
    v = (np.arange(height, dtype=np.float64) - height / 2) / focal_length
    z = depth.astype(np.float64)
    xyz = np.stack([z * u[None, :], z * v[:, None], z], axis=-1)
    if pose is not None:
        xyz = xyz @ pose[:3, :3].T + pose[:3, 3]
    valid = np.isfinite(z) & (z > 0)
    xyz[~valid] = 0.0
    return xyz.astype(np.float32)


def dominant_defect(pixels: dict[str, int]) -> str:
    """The type with the most anomalous pixels; ties go to the first in DEFECT_TYPES."""
    return max(DEFECT_TYPES, key=lambda t: (pixels.get(t, 0), -DEFECT_TYPES.index(t)))


def _read_label(path: Path, from_mask: bool) -> None:
    """Cross-check the metadata YAML against the mask when it carries a 0/1 `anomalous` flag.

    The label itself comes from `mask` (the data set's own metrics and M3DM both do so); the metadata
    schema is not documented, so other keys are left alone.
    """
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise EyecandiesError(f"metadata {path} is not a YAML mapping")
    flag = data.get("anomalous")
    if isinstance(flag, bool | int) and bool(flag) != from_mask:
        raise EyecandiesError(
            f"metadata {path} says anomalous={flag} but the mask is {'non-' if from_mask else ''}empty"
        )


def read_part(
    split_dir: Path,
    sample_id: str,
    *,
    light: int = GLOBAL_LIGHT,
    labelled: bool,
    world_frame: bool = False,
    focal_length: float = FOCAL_LENGTH,
) -> EyecandiesPart:
    """Read and convert one sample. Raises EyecandiesError naming the first missing or malformed file."""
    if light not in LIGHTS:
        raise EyecandiesError(f"light {light} is not one of image_0…image_5")
    bgr = read_png(item_path(split_dir, sample_id, f"image_{light}", "png"), dtype=np.uint8, channels=3)
    depth_path = item_path(split_dir, sample_id, "depth", "png")
    depth_png = read_png(depth_path, dtype=np.uint16, channels=1)
    low, high = read_normalisation(item_path(split_dir, sample_id, "info_depth", "yaml"))
    if depth_png.shape != bgr.shape[:2]:
        raise EyecandiesError(f"{depth_path} is {depth_png.shape} but image_{light} is {bgr.shape[:2]} (H×W)")
    pose = read_pose(item_path(split_dir, sample_id, "pose", "txt")) if world_frame else None
    xyz = back_project(metric_depth(depth_png, low, high), focal_length, pose)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if not labelled:
        return EyecandiesPart(sample_id, rgb, xyz, None, None, {})

    masks = {}
    for name in ("mask", *(f"{t}_mask" for t in DEFECT_TYPES)):
        path = item_path(split_dir, sample_id, name, "png")
        mask = read_png(path, dtype=np.uint8, channels=1)
        if mask.shape != depth_png.shape:
            raise EyecandiesError(f"{path} is {mask.shape} but the depth is {depth_png.shape} (H×W)")
        masks[name] = mask != 0
    gt = masks["mask"]
    _read_label(item_path(split_dir, sample_id, "metadata", "yaml"), bool(gt.any()))
    if not gt.any():
        return EyecandiesPart(sample_id, rgb, xyz, gt, "good", {})
    pixels = {t: int(masks[f"{t}_mask"].sum()) for t in DEFECT_TYPES}
    if not any(pixels.values()):
        raise EyecandiesError(f"sample {sample_id} in {split_dir}: `mask` is set but every per-type mask is empty")
    return EyecandiesPart(sample_id, rgb, xyz, gt, dominant_defect(pixels), pixels)
