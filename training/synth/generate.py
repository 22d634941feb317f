"""`python -m training synth`: write a synthetic RGB + point-cloud data set in the MVTec 3D-AD layout.

Each part is a height-field object on a tilted table seen by a pinhole camera from above; lighting depends
on the pixel only, so depth-only defects (dent, bump) never show in colour, the colour-only one (stain)
never shows in depth, and crack and hole show in both. Defaults (--size 400, 48 train, 12 validation,
8 test parts per defect type and 8 good: 108 parts, 220 MB, mostly the uncompressed xyz TIFFs like the
real data's) make a demo-grade category for 256-px training in about 7 s on one core; a small set
(--size 128 --train 10 --validation 4 --test-per-defect 3) takes about 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm import tqdm

from training.data.layout import GOOD, SPLITS
from training.synth.defects import DEFECTS, DefectEdit, apply_defect, make_defect
from training.synth.scene import Camera, PartSpec, build_scene, compose, sample_part_spec
from training.synth.shapes import CATEGORIES, DEFAULT_CATEGORY

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "synth-1"  # bump when the same seed would give different files
PART_KINDS = (GOOD, *DEFECTS)
DEFAULT_SIZE = 400
DEFAULT_TRAIN = 48
DEFAULT_VALIDATION = 12
DEFAULT_TEST_PER_DEFECT = 8
MIN_SIZE = 64  # below this the objects' details and the smallest defects fall under a pixel


class SynthConfigError(ValueError):
    """An argument of the synthetic generator is out of range."""


class OutputExistsError(FileExistsError):
    """The category folder already holds files and overwriting was not asked for (or is not safe)."""


@dataclass(frozen=True)
class RenderedPart:
    """One synthetic part as the sensor and the annotator would deliver it.

    `rgb`: (H, W, 3) uint8 RGB. `xyz`: (H, W, 3) float32, camera frame, metres, all three exactly 0 where
    nothing was seen. `gt`: (H, W) uint8 class code of the defect (see `DEFECTS`) on its pixels, else 0.
    `valid`: (H, W) bool, the sensor saw a point. `object_mask`: (H, W) bool, pixels on the object.
    """

    spec: PartSpec
    defect: str | None
    rgb: np.ndarray
    xyz: np.ndarray
    gt: np.ndarray
    valid: np.ndarray
    object_mask: np.ndarray


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote: per category, parts per `split/defect` folder."""

    out: Path
    categories: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W)
    counts: dict[str, dict[str, int]]
    n_parts: int
    seconds: float


def plan_part(category: str, camera: Camera, seed: int, split: str, defect: str, index: int) -> tuple[PartSpec, int]:
    """The spec and defect seed of one part. Each part has its own seed stream, so a part does not change
    when other categories, splits or counts are asked for."""
    if split not in SPLITS or defect not in PART_KINDS or index < 0:
        raise SynthConfigError(
            f"no part {split}/{defect}/{index}: split in {SPLITS}, defect in {PART_KINDS}, index ≥ 0"
        )
    key = (zlib.crc32(category.encode()), SPLITS.index(split), PART_KINDS.index(defect), index)
    state = np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(2, np.uint64)
    spec = sample_part_spec(category, camera, np.random.default_rng(state[0]))
    return spec, int(state[1])


def render_part(spec: PartSpec, defect: str | None = None, defect_seed: int = 0) -> RenderedPart:
    """Render a part, defect-free (`defect` None or "good") or with one defect drawn from `defect_seed`.

    The same `spec` with and without a defect differs only where the defect changed height or colour.
    """
    scene = build_scene(spec)
    edit: DefectEdit | None = None
    if defect not in (None, GOOD):
        edit = make_defect(str(defect), scene, np.random.default_rng(defect_seed))
    height, albedo, missing = apply_defect(scene, edit)
    rgb, xyz, valid = compose(scene, height, albedo, missing)
    gt = np.zeros(valid.shape, np.uint8)
    if edit is not None:
        gt[edit.mask] = DEFECTS[edit.kind][0]
    return RenderedPart(spec, None if edit is None else edit.kind, rgb, xyz, gt, valid, scene.object_mask)


def _write_part(part: RenderedPart, folder: Path, stem: str) -> None:
    if not cv2.imwrite(str(folder / "rgb" / f"{stem}.png"), np.ascontiguousarray(part.rgb[..., ::-1])):
        raise OSError(f"could not write {folder / 'rgb' / stem}.png")
    # photometric="rgb" keeps (H, W, 3) as one interleaved page, like MVTec 3D-AD's xyz files.
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", part.xyz, photometric="rgb")
    if not cv2.imwrite(str(folder / "gt" / f"{stem}.png"), part.gt):
        raise OSError(f"could not write {folder / 'gt' / stem}.png")


def _resolve_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    if not categories:
        return (DEFAULT_CATEGORY,)
    names = list(CATEGORIES) if "all" in categories else list(dict.fromkeys(categories))
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise SynthConfigError(f"unknown categories {unknown}; expected some of {sorted(CATEGORIES)} or 'all'")
    return tuple(names)


def _image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < MIN_SIZE or max(hw) > 4096:
        raise SynthConfigError(f"image size {size} (H, W) must be {MIN_SIZE}..4096 pixels per side")
    return int(hw[0]), int(hw[1])


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{folder} is not empty; pass --overwrite to replace it")
        # Only ever delete what this generator wrote: its info file marks the folder as ours.
        if not (folder / "synth.json").is_file():
            raise OutputExistsError(f"{folder} is not empty and was not written by the generator; not deleting it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _plan_counts(
    n_train: int, n_validation: int, n_test_per_defect: int, n_test_good: int | None = None
) -> dict[str, int]:
    counts = {"train/good": n_train, "validation/good": n_validation}
    counts.update({f"test/{kind}": n_test_per_defect for kind in PART_KINDS})
    if n_test_good is not None:
        counts["test/good"] = n_test_good
    bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
    if bad:
        raise SynthConfigError(f"part counts must be integers ≥ 0, got {bad}")
    return counts


def generate(
    out: Path,
    categories: Sequence[str] | None = None,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    n_train: int = DEFAULT_TRAIN,
    n_validation: int = DEFAULT_VALIDATION,
    n_test_per_defect: int = DEFAULT_TEST_PER_DEFECT,
    n_test_good: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write `<out>/<category>/{train,validation,test}/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}`.

    `categories`: names from `CATEGORIES` or "all" (default: the small, easy `DEFAULT_CATEGORY`).
    `size`: square side or (H, W) in pixels. Test gets `n_test_good` good parts (default: `n_test_per_defect`;
    more unseen good parts measure the false-reject rate: parts 0..n-1 are the same whatever n). Each
    category also gets `class_ids.json` (gt code → defect name, as in MVTec 3D-AD) and `synth.json` (the
    generator's parameters). Same arguments → byte-identical files.
    """
    start = time.perf_counter()
    if not isinstance(seed, int) or seed < 0:
        raise SynthConfigError(f"seed must be an integer ≥ 0, got {seed!r}")
    names = _resolve_categories(categories)
    height, width = _image_size(size)
    counts = _plan_counts(n_train, n_validation, n_test_per_defect, n_test_good)
    camera = Camera.for_size(height, width)
    out = Path(out)
    jobs = [(c, folder, i) for c in names for folder, n in counts.items() for i in range(n)]
    digits = max(3, len(str(max(counts.values()) - 1)))  # 000, 001, ... sorted by name = sorted by number
    for category in names:
        _prepare_folder(out / category, overwrite)
        # No empty folders (a count of 0): readers treat a defect folder without parts as an error.
        for folder in (f for f, n in counts.items() if n > 0):
            for sub in ("rgb", "xyz", "gt"):
                (out / category / folder / sub).mkdir(parents=True, exist_ok=True)
        # Written first: it marks the folder as the generator's, so --overwrite may clear a failed run.
        _write_info(out / category, category, seed, camera, counts)

    for category, folder, index in tqdm(jobs, desc="synth", unit="part", disable=not progress):
        split, defect = folder.split("/")
        spec, defect_seed = plan_part(category, camera, seed, split, defect, index)
        part = render_part(spec, defect, defect_seed)
        _write_part(part, out / category / folder, f"{index:0{digits}d}")

    seconds = time.perf_counter() - start
    logger.info("synth: %d parts of %s at %dx%d (W×H) in %s, %.1f s", len(jobs), ", ".join(names), width,
                height, out, seconds)  # fmt: skip
    return SynthSummary(out, names, (height, width), {c: dict(counts) for c in names}, len(jobs), seconds)


def _write_info(folder: Path, category: str, seed: int, camera: Camera, counts: dict[str, int]) -> None:
    class_ids = {str(code): name for name, (code, _) in DEFECTS.items()} | {"0": GOOD}
    (folder / "class_ids.json").write_text(json.dumps(class_ids, indent=2) + "\n")
    info = {
        "generator": GENERATOR_VERSION,
        "category": category,
        "description": CATEGORIES[category].description,
        "seed": seed,
        "image_size_hw": [camera.height, camera.width],
        "camera": {"focal_px": camera.focal_px, "cx": camera.cx, "cy": camera.cy, "units": "metres"},
        "defects": {name: {"code": code, "visible_in": modality} for name, (code, modality) in DEFECTS.items()},
        "counts": counts,
    }
    (folder / "synth.json").write_text(json.dumps(info, indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="data root to write (MVTec 3D-AD layout)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=[DEFAULT_CATEGORY],
        metavar="NAME",
        help=f"some of {', '.join(CATEGORIES)}, or 'all' (default: {DEFAULT_CATEGORY})",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="square image side in pixels")
    parser.add_argument("--height", type=int, default=None, help="image height, overrides --size (default: --size)")
    parser.add_argument("--width", type=int, default=None, help="image width, overrides --size (default: --size)")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="good train parts")
    parser.add_argument("--validation", type=int, default=DEFAULT_VALIDATION, help="good validation parts")
    parser.add_argument(
        "--test-per-defect",
        type=int,
        default=DEFAULT_TEST_PER_DEFECT,
        help=f"test parts per defect type and good; types: {', '.join(DEFECTS)}",
    )
    parser.add_argument(
        "--test-good",
        type=int,
        default=None,
        help="good test parts (default: --test-per-defect); e.g. 100 to measure false-reject rates",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace category folders this tool wrote")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    size = (args.height or args.size, args.width or args.size)
    try:
        summary = generate(
            args.out,
            args.categories,
            seed=args.seed,
            size=size,
            n_train=args.train,
            n_validation=args.validation,
            n_test_per_defect=args.test_per_defect,
            n_test_good=args.test_good,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (SynthConfigError, OutputExistsError) as exc:
        logger.error("synth: %s", exc)
        return 2
    h, w = summary.image_size
    print(f"wrote {summary.n_parts} parts ({', '.join(summary.categories)}, {w}x{h}) to {summary.out} "
          f"in {summary.seconds:.1f} s")  # fmt: skip
    return 0
