"""`python -m training convert-eyecandies`: one Eyecandies category → our MVTec 3D-AD layout.

Writes `<out>/<Category>/{train/good, validation/good, test/good, test/<type>}/{rgb,xyz[,gt]}/<id>.*`:
`rgb` the chosen light's image (PNG), `xyz` the point cloud back-projected from the metric depth (float32
TIFF, metres, camera frame unless --world-frame), `gt` the sample's `mask` (test only; all-zero for good
parts). Anomalous test parts go to the folder of their dominant per-type mask (bumps, dents, colors,
normals). Everything is written into a hidden temporary folder next to the result and renamed at the
end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from tqdm import tqdm

from training.data.eyecandies import (
    FOCAL_LENGTH,
    GLOBAL_LIGHT,
    LIGHTS,
    SPLITS,
    UNLABELLED_SPLITS,
    EyecandiesError,
    EyecandiesPart,
    find_category,
    read_part,
    sample_ids,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "eyecandies_conversion.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, type=Path, help="Eyecandies root holding the category folders")
    p.add_argument("--category", required=True, help="e.g. CandyCane or 'Candy Cane' (case/space-insensitive)")
    p.add_argument("--out", required=True, type=Path, help="data root to write <Category>/ into (created)")
    p.add_argument(
        "--light",
        type=int,
        choices=list(LIGHTS),
        default=GLOBAL_LIGHT,
        help="which image_N becomes rgb: 5 global lighting (default, the paper's choice), 0 all spotlights, "
        "1-4 one spotlight (bottom, right, top, left)",
    )
    p.add_argument(
        "--world-frame",
        action="store_true",
        help="write points in the world frame through each sample's pose (default: camera frame, which the "
        "depth image and the plane-based foreground expect)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = convert(
            args.src,
            args.category,
            args.out,
            light=args.light,
            world_frame=args.world_frame,
            progress=not args.no_progress,
        )
    except (EyecandiesError, FileExistsError) as exc:
        print(f"convert-eyecandies: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {dict(c)}" for split, c in summary["counts"].items())
    print(f"wrote {summary['out']}: {counts}")
    for note in summary["skipped"]:
        print(f"skipped {note}")
    return 0


def convert(
    src: Path,
    category: str,
    out: Path,
    *,
    light: int = GLOBAL_LIGHT,
    world_frame: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert one category; returns the summary also written to `<out>/<Category>/eyecandies_conversion.json`.

    Raises EyecandiesError naming the first missing or malformed file, FileExistsError when the target
    exists. Nothing is left under `out` on failure (a data root this call created is removed again).
    """
    source = find_category(Path(src), category)
    out = Path(out)
    target = out / source.name
    if target.exists():
        raise FileExistsError(f"{target} already exists: remove it or choose another --out")
    created_root = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.partial-", dir=out))
    try:
        summary = _convert_into(source, staging, light=light, world_frame=world_frame, progress=progress)
        summary["out"] = str(target)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root and not any(out.iterdir()):
            out.rmdir()
        raise
    return summary


def _convert_into(source: Path, staging: Path, *, light: int, world_frame: bool, progress: bool) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = {}
    defect_pixels: dict[str, dict[str, int]] = {}
    skipped = []
    for name in UNLABELLED_SPLITS:
        if (source / name).is_dir():
            skipped.append(f"{source / name}: no labels (the data set's private test split)")
            log.info("skipping %s: no labels", source / name)
    for published, ours in SPLITS.items():
        split_dir = source / published
        if not split_dir.is_dir():
            raise EyecandiesError(f"missing split folder {split_dir}")
        labelled = ours == "test"
        ids = sample_ids(split_dir)
        counts[ours] = Counter()
        for sample_id in tqdm(ids, desc=f"convert {published}", unit="sample", disable=not progress):
            part = read_part(split_dir, sample_id, light=light, labelled=labelled, world_frame=world_frame)
            defect = part.defect or "good"
            _write_part(staging / ours / defect, part, with_gt=labelled)
            counts[ours][defect] += 1
            if part.defect_pixels:
                defect_pixels[f"{published}/{sample_id}"] = part.defect_pixels
    return {
        "source": str(source),
        "category": source.name,
        "light": f"image_{light}",
        "frame": "world (through pose)" if world_frame else "camera",
        "focal_length_px": FOCAL_LENGTH,
        "counts": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "defect_pixels": defect_pixels,
        "skipped": skipped,
    }


def _write_part(folder: Path, part: EyecandiesPart, *, with_gt: bool) -> None:
    """rgb/<id>.png, xyz/<id>.tiff and (test) gt/<id>.png; ids padded to at least 3 digits."""
    stem = part.sample_id.zfill(3)
    for sub in ("rgb", "xyz", "gt") if with_gt else ("rgb", "xyz"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(folder / "rgb" / f"{stem}.png"), cv2.cvtColor(part.rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {folder / 'rgb' / f'{stem}.png'}")
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", part.xyz)
    if with_gt:
        gt = part.gt if part.gt is not None else np.zeros(part.xyz.shape[:2], bool)
        if not cv2.imwrite(str(folder / "gt" / f"{stem}.png"), gt.astype(np.uint8) * 255):
            raise OSError(f"cannot write {folder / 'gt' / f'{stem}.png'}")
