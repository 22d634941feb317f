"""The verdicts of a served model on a test split, and the sample parts of the bundled demo model.

    python -m training.evaluation.demo_sample --model models/demo --test DATA/puck/test [--copy-to models/demo/sample]

Every part of the split (MVTec layout: `<defect>/rgb`, `<defect>/xyz`, `<defect>/gt`) goes through the
service's own engine, as `POST /v1/predict` would score it (threshold, pixel threshold, regions, decision
rule of the model folder). Prints a Markdown paragraph with the false-reject and detection rates per defect
type. With `--copy-to`, it picks the sample parts: the NG sample is the defective part, of `--defect`, with
the highest score among those answered NG whose top region's box covers at least half of the ground truth
(it has `area_mm2`); the good sample is the first good part answered OK without regions. They are copied as
rgb.png, xyz.tiff, gt.png and good_rgb.png, good_xyz.tiff (the names README, tests and benchmarks use).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.engine import PartUpload
from training.data.layout import GOOD
from training.scoring.engine import open_engine

MIN_GT_COVERED = 0.5  # share of the ground-truth pixels inside the top region's box


@dataclass(frozen=True)
class Verdict:
    defect: str
    stem: str
    folder: Path
    score: float
    is_anomalous: bool
    on_defect: bool  # top region with an area covers ≥ MIN_GT_COVERED of the ground truth (defective parts)
    has_regions: bool


def _covers(gt_path: Path, box: tuple[int, int, int, int]) -> bool:
    gt: np.ndarray = np.asarray(cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)) > 0
    x, y, w, h = box
    return bool(gt.any()) and gt[y : y + h, x : x + w].sum() >= MIN_GT_COVERED * gt.sum()


def score_split(model_dir: Path, test: Path) -> tuple[str, list[Verdict]]:
    """The model as served (one line: version, thresholds) and the verdict of every part of `test`."""
    out = []
    with open_engine(model_dir) as engine:
        model = engine.get(None)
        m = model.manifest
        pixel = "none" if m.pixel_threshold is None else f"{m.pixel_threshold:.4f}"
        served = (
            f"Version {m.version} ({m.threshold.method}, {m.threshold.n_parts} good parts): threshold "
            f"{model.threshold:.4f}, pixel threshold {pixel}."
        )
        for folder in sorted(p for p in test.iterdir() if (p / "rgb").is_dir()):
            for rgb in sorted((folder / "rgb").glob("*.png")):
                xyz = folder / "xyz" / f"{rgb.stem}.tiff"
                p = engine.predict_upload(PartUpload(rgb=rgb.read_bytes(), xyz=xyz.read_bytes())).prediction
                top = p.regions[0] if p.regions else None
                gt = folder / "gt" / rgb.name
                on_defect = (
                    top is not None
                    and top.area_mm2 is not None
                    and gt.is_file()
                    and _covers(gt, (top.x, top.y, top.width, top.height))
                )
                out.append(Verdict(folder.name, rgb.stem, folder, p.score, p.is_anomalous, on_defect, bool(p.regions)))
    return served, out


def report(verdicts: list[Verdict]) -> str:
    good = [v for v in verdicts if v.defect == GOOD]
    bad = [v for v in verdicts if v.defect != GOOD]
    per = ", ".join(
        f"{d} {sum(v.is_anomalous for v in bad if v.defect == d)}/{sum(v.defect == d for v in bad)}"
        for d in sorted({v.defect for v in bad})
    )
    caught = sum(v.is_anomalous for v in bad)
    located = sum(v.is_anomalous and v.on_defect for v in bad)
    return (
        f"Through the service's engine on the test split: false rejects {sum(v.is_anomalous for v in good)} of "
        f"{len(good)} good parts; detection {caught} of {len(bad)} defective parts ({per}); {located} of the "
        f"{caught} detected show their top region over the ground truth."
    )


def copy_samples(verdicts: list[Verdict], defect: str, dest: Path) -> tuple[Verdict, Verdict]:
    candidates = [v for v in verdicts if v.defect == defect and v.is_anomalous and v.on_defect]
    goods = [v for v in verdicts if v.defect == GOOD and not v.is_anomalous and not v.has_regions]
    if not candidates or not goods:
        raise SystemExit(f"no {defect} part answered NG over its defect, or no good part answered OK without regions")
    ng, good = max(candidates, key=lambda v: v.score), goods[0]
    dest.mkdir(parents=True, exist_ok=True)
    for part, prefix, names in ((ng, "", ("rgb", "xyz", "gt")), (good, "good_", ("rgb", "xyz"))):
        for kind in names:
            suffix = ".tiff" if kind == "xyz" else ".png"
            shutil.copyfile(part.folder / kind / f"{part.stem}{suffix}", dest / f"{prefix}{kind}{suffix}")
    return ng, good


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.demo_sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="the model folder, as the service loads it")
    parser.add_argument("--test", type=Path, required=True, help="the test split: <defect>/rgb, xyz, gt")
    parser.add_argument("--copy-to", type=Path, default=None, help="copy the chosen sample parts here")
    parser.add_argument("--defect", default="crack", help="defect type of the NG sample (default: crack)")
    args = parser.parse_args(argv)
    served, verdicts = score_split(args.model, args.test)
    print(served, report(verdicts))
    if args.copy_to is not None:
        ng, good = copy_samples(verdicts, args.defect, args.copy_to)
        print(f"Sample parts: {ng.defect}/{ng.stem} (score {ng.score:.3f}, NG) and {good.defect}/{good.stem} "
              f"(score {good.score:.3f}, OK).")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
