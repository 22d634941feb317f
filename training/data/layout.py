"""MVTec 3D-AD data on disk: discover parts (rgb/xyz/gt paired by file stem) and load them as arrays."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.codecs import CodecError, DecodeLimits, decode_rgb, decode_xyz

logger = logging.getLogger(__name__)

# A part's rgb and xyz files are read by the service's decoders under its default limits, so training takes
# exactly the inputs the service would score: a file the service refuses (an infinite coordinate, a pickled
# .npy, an unsupported TIFF compression) is refused here too, naming the file, rather than trained on. The
# service's rule for infinite coordinates is the one kept: no sensor measures one, and a single inf turns
# the depth normalisation of the whole part into NaN.
PART_FILE_LIMITS = DecodeLimits()

SPLITS = ("train", "validation", "test")
GOOD = "good"
RGB_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
XYZ_EXTENSIONS = frozenset({".tif", ".tiff", ".npy"})
GT_EXTENSIONS = frozenset({".png"})
# Problems are collected over a whole split so that one run shows them all; the message keeps the first few.
_MAX_LISTED_PROBLEMS = 10


class DatasetError(ValueError):
    """A data set on disk does not have the expected layout or content."""


@dataclass(frozen=True)
class Sample:
    """One part on disk: its rgb image, organized point cloud and ground-truth mask."""

    category: str
    split: str
    defect: str
    stem: str
    rgb_path: Path
    xyz_path: Path | None
    gt_path: Path | None  # None for a good part without a mask: read as all-zero

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass(frozen=True)
class RawPart:
    """A loaded part at native resolution.

    `rgb`: (H, W, 3) uint8, RGB order. `xyz`: (H, W, 3) float32, camera frame, metres, 0 or NaN = no point;
    None when the part has no point cloud (only with `discover(..., require_xyz=False)`).
    `gt`: (H, W) bool, True = anomalous pixel.
    """

    sample: Sample
    rgb: np.ndarray
    xyz: np.ndarray | None
    gt: np.ndarray


def list_categories(root: Path) -> list[str]:
    """Category folders under `root`: non-hidden folders holding a `train` or `test` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} is not a folder")
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and ((d / "train").is_dir() or (d / "test").is_dir())
    )


def list_defects(root: Path, category: str, split: str) -> list[str]:
    """Defect-type folders (`good` included) of one split, sorted."""
    split_dir = _split_dir(Path(root), category, split)
    defects = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not defects:
        raise DatasetError(f"split folder {split_dir} holds no defect-type folders (expected e.g. 'good')")
    return defects


def discover(root: Path, category: str, split: str, *, require_xyz: bool = True) -> list[Sample]:
    """All parts of one split, sorted by (defect, stem).

    Files are paired by file stem (never by position): `rgb/007.png` goes with `xyz/007.tiff` and
    `gt/007.png`. The rgb image anchors a part. Hidden files and files with other extensions are ignored.
    With `require_xyz=False` a part may lack its point cloud (`xyz_path` None) and ground-truth masks
    without an rgb image are skipped with a warning (partial data sets); otherwise both are errors.
    Raises DatasetError naming every missing or mismatched file (the first few of them).
    """
    root = Path(root)
    problems: list[str] = []
    samples: list[Sample] = []
    for defect in list_defects(root, category, split):
        defect_dir = root / category / split / defect
        samples.extend(_discover_defect(defect_dir, category, split, defect, require_xyz, problems))
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DatasetError(f"{len(problems)} problem(s) in {root / category / split}:\n  {listed}{tail}")
    if not samples:
        raise DatasetError(f"split folder {root / category / split} holds no rgb images")
    return sorted(samples, key=lambda s: (s.defect, s.stem))


def discover_folder(folder: Path, *, category: str = "", defect: str = GOOD) -> list[Sample]:
    """The parts of one `rgb/` + `xyz/` (+ `gt/`) folder outside a data-set layout, e.g. good parts
    collected on the line; paired by stem as in `discover`. Raises DatasetError naming the problems."""
    folder = Path(folder)
    problems: list[str] = []
    samples = _discover_defect(folder, category, "", defect, True, problems)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
        raise DatasetError(f"{len(problems)} problem(s) in {folder}:\n  {listed}")
    if not samples:
        raise DatasetError(f"{folder / 'rgb'} holds no rgb images")
    return sorted(samples, key=lambda s: s.stem)


def _split_dir(root: Path, category: str, split: str) -> Path:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    category_dir = root / category
    if not category_dir.is_dir():
        found = list_categories(root)
        raise DatasetError(
            f"unknown category {category!r}: no folder {category_dir}; "
            f"categories found under {root}: {', '.join(found) if found else 'none'}"
        )
    split_dir = category_dir / split
    if not split_dir.is_dir():
        raise DatasetError(f"missing split folder {split_dir}")
    return split_dir


def _discover_defect(
    defect_dir: Path, category: str, split: str, defect: str, require_xyz: bool, problems: list[str]
) -> list[Sample]:
    rgb_dir, xyz_dir, gt_dir = defect_dir / "rgb", defect_dir / "xyz", defect_dir / "gt"
    if not rgb_dir.is_dir():
        problems.append(f"missing rgb folder {rgb_dir}")
        return []
    if require_xyz and not xyz_dir.is_dir():
        problems.append(f"missing xyz folder {xyz_dir} (point clouds are required)")
        return []
    rgb = _files_by_stem(rgb_dir, RGB_EXTENSIONS, problems)
    xyz = _files_by_stem(xyz_dir, XYZ_EXTENSIONS, problems)
    gt = _files_by_stem(gt_dir, GT_EXTENSIONS, problems)

    for stem in sorted(xyz.keys() - rgb.keys()):
        problems.append(f"xyz {xyz[stem]} has no rgb image {stem}.* in {rgb_dir}")
    orphan_gt = sorted(gt.keys() - rgb.keys())
    if orphan_gt and require_xyz:
        problems.extend(f"gt {gt[stem]} has no rgb image {stem}.* in {rgb_dir}" for stem in orphan_gt)
    elif orphan_gt:
        logger.warning("%d gt mask(s) in %s have no rgb image; skipped", len(orphan_gt), gt_dir)

    samples = []
    for stem, rgb_path in rgb.items():
        xyz_path, gt_path = xyz.get(stem), gt.get(stem)
        if xyz_path is None and require_xyz:
            problems.append(f"rgb {rgb_path} has no point cloud {stem}.tiff (or .tif/.npy) in {xyz_dir}")
        if gt_path is None and defect != GOOD:
            problems.append(f"defective part {rgb_path} has no ground-truth mask {stem}.png in {gt_dir}")
        samples.append(Sample(category, split, defect, stem, rgb_path, xyz_path, gt_path))
    return samples


def _files_by_stem(folder: Path, extensions: Iterable[str], problems: list[str]) -> dict[str, Path]:
    """Stem → file for the non-hidden files with one of `extensions` (case-insensitive) in `folder`."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    ignored = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in extensions:
            ignored.append(path.name)
            continue
        if path.stem in found:
            problems.append(f"two files with stem {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}")
            continue
        found[path.stem] = path
    if ignored:
        logger.debug("ignored %d file(s) with other extensions in %s: %s", len(ignored), folder, ignored[:5])
    return found


def _read_image(path: Path) -> np.ndarray:
    # imdecode on the raw bytes instead of imread: it reads any file name and tells a missing file
    # (OSError from numpy) apart from an undecodable one (None from OpenCV).
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"cannot decode image {path} ({data.size} bytes)")
    return image


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


def load_rgb(path: Path) -> np.ndarray:
    """An image file (PNG, JPEG, TIFF) as (H, W, 3) uint8 RGB, decoded as the service decodes an upload
    (`service.codecs.decode_rgb`): gray replicated, alpha dropped, 16-bit scaled to 8."""
    path = Path(path)
    try:
        return decode_rgb(_read_bytes(path, "image"), PART_FILE_LIMITS, field=str(path))
    except CodecError as exc:
        raise DatasetError(f"cannot decode image {exc}") from exc


def load_xyz(path: Path) -> np.ndarray:
    """An organized point cloud (.tif/.tiff or .npy) as (H, W, 3) float32, metres, 0/NaN = no point, decoded
    as the service decodes an upload (`service.codecs.decode_xyz`: infinite coordinates are refused)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in XYZ_EXTENSIONS:
        raise DatasetError(f"point cloud {path} has extension {suffix!r}; expected .tif, .tiff or .npy")
    try:
        return decode_xyz(_read_bytes(path, "point cloud"), PART_FILE_LIMITS, field=str(path))
    except CodecError as exc:
        raise DatasetError(f"cannot read point cloud {exc}") from exc


def _read_gt(path: Path) -> np.ndarray:
    """Raw (H, W) integer mask as stored: class codes, not 0/1."""
    mask = _read_image(Path(path))
    if mask.ndim == 3:
        # A colour-saved mask: a pixel is anomalous when any channel is non-zero.
        mask = mask.max(axis=2)
    return mask


def load_gt(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth as (H, W) bool, `mask > 0` (masks hold class codes such as 253/254/255).

    `shape`: the part's (H, W); the mask must match it. `path` None (a good part without a mask) gives
    an all-False mask of that shape.
    """
    if path is None:
        return np.zeros(shape, dtype=bool)
    mask = _read_gt(path)
    if mask.shape != tuple(shape):
        raise DatasetError(f"gt mask {path} is {_hw(mask.shape)} (H×W); expected {_hw(shape)}")
    return mask > 0


def load_sample(sample: Sample) -> RawPart:
    """Load one part; its rgb, xyz and gt must share H×W (non-square is fine)."""
    rgb = load_rgb(sample.rgb_path)
    xyz = load_xyz(sample.xyz_path) if sample.xyz_path is not None else None
    gt_raw = _read_gt(sample.gt_path) if sample.gt_path is not None else None
    shapes = {sample.rgb_path: rgb.shape[:2]}
    if xyz is not None and sample.xyz_path is not None:
        shapes[sample.xyz_path] = xyz.shape[:2]
    if gt_raw is not None and sample.gt_path is not None:
        shapes[sample.gt_path] = gt_raw.shape[:2]
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{p} is {_hw(s)}" for p, s in shapes.items())
        raise DatasetError(f"files of part {sample.stem} disagree in size (H×W): {listed}")
    gt = gt_raw > 0 if gt_raw is not None else np.zeros(rgb.shape[:2], dtype=bool)
    return RawPart(sample=sample, rgb=rgb, xyz=xyz, gt=gt)


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}×{shape[1]}"
