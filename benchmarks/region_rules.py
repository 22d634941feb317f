"""Candidate region rules compared on a test split: region area / true defect area, length, IoU and the
share of detected defective parts with a region over the defect.

Run from the repository root, in two steps (scoring once, comparing offline as often as wanted):
    python benchmarks/region_rules.py dump (--model models/NAME | --run RUN) --data ROOT --category C --out S.npz
    python benchmarks/region_rules.py compare S.npz [S2.npz ...] [--ratios 0 0.5 0.7] [--factors 1 1.5]
`dump` scores the test split with the exported model through the service's engine (or a run's checkpoint
with PyTorch) and keeps the maps at the model's resolution, the image and pixel thresholds. `compare` cuts
regions with every pair (pixel threshold × factor, peak ratio) through `service.postprocessing.regions`
and prints `training.evaluation.region_sizes`' report per data set and defect type. The image score and
the verdict do not depend on the rule.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.preprocessing import PreprocessConfig
from training.data.layout import discover, load_sample
from training.data.prepared import prepare_split
from training.evaluation.region_sizes import part_regions, summarize_parts


def dump(args: argparse.Namespace) -> int:
    if args.model is not None:
        from training.scoring.engine import open_engine, score_with_engine

        with open_engine(args.model) as engine:
            model = engine.get(None)
            test = prepare_split(Path(args.data), args.category, "test", model.manifest.preprocessing)
            scores, maps = score_with_engine(engine, model, test.rgb, test.depth)
            threshold, pixel_threshold = model.threshold, model.manifest.pixel_threshold
    else:
        from training.runs import load_run
        from training.scoring.torch_model import score_with_torch

        run = load_run(args.run)
        config: PreprocessConfig = run.config.preprocessing
        test = prepare_split(Path(args.data), args.category, "test", config)
        scores, maps = score_with_torch(run.model, test.rgb, test.depth)
        threshold, pixel_threshold = run.calibration.threshold, run.calibration.pixel_threshold
    if pixel_threshold is None:
        raise SystemExit("the model has no pixel threshold: run `python -m training calibrate` on it first")
    np.savez_compressed(
        args.out,
        scores=scores,
        maps=maps,
        threshold=float(threshold),
        pixel_threshold=float(pixel_threshold),
        data=str(args.data),
        category=args.category,
        stems=np.array([f"{s.defect}/{s.stem}" for s in test.samples]),
    )
    print(f"wrote {args.out}: {len(scores)} parts")
    return 0


def compare(args: argparse.Namespace) -> int:
    for path in args.dumps:
        d = np.load(path)
        samples = discover(Path(str(d["data"])), str(d["category"]), "test")
        if [f"{s.defect}/{s.stem}" for s in samples] != d["stems"].tolist():
            raise SystemExit(f"{path}: the test split on disk is not the one scored")
        raw = [load_sample(s) for s in samples]
        clouds = [r.xyz for r in raw if r.xyz is not None]
        if len(clouds) != len(raw):
            raise SystemExit(f"{path}: a part of the test split has no point cloud")
        threshold, pixel = float(d["threshold"]), float(d["pixel_threshold"])
        print(f"\n## {path} ({d['category']}): threshold {threshold:.4f}, pixel threshold {pixel:.4f}")
        print("factor | ratio | defect | detected | on defect | area ratio p25/50/75 | length ratio | IoU")
        for factor, ratio in itertools.product(args.factors, args.ratios):
            parts = [
                part_regions(
                    m,
                    c,
                    r.gt,
                    defect=s.defect,
                    detected=bool(v > threshold),
                    pixel_threshold=pixel * factor,
                    peak_ratio=ratio,
                )
                for s, r, c, m, v in zip(samples, raw, clouds, d["maps"], d["scores"], strict=True)
            ]
            report = summarize_parts(parts)
            for kind, row in report["per_defect"].items():
                a, ln, iou = row["area_ratio"], row["length_ratio"], row["iou"]
                spread = "–" if a["median"] is None else f"{a['p25']:.2f}/{a['median']:.2f}/{a['p75']:.2f}"
                print(
                    f"{factor:g} | {ratio:g} | {kind} | {row['detected']}/{row['parts']} | "
                    f"{row['detected_with_region_on_defect']} | {spread} | "
                    f"{'–' if ln['median'] is None else format(ln['median'], '.2f')} | "
                    f"{'–' if iou['median'] is None else format(iou['median'], '.2f')}"
                )
            print(f"{factor:g} | {ratio:g} | good parts with a region: {report['good_parts_with_a_region']:.0%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="score a test split once")
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help="exported model folder")
    what.add_argument("--run", type=Path, help="training run (PyTorch)")
    d.add_argument("--data", required=True, help="data root")
    d.add_argument("--category", required=True)
    d.add_argument("--out", required=True, type=Path, help="npz file to write")
    c = sub.add_parser("compare", help="region rules on dumped maps")
    c.add_argument("dumps", nargs="+", type=Path)
    c.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.5, 0.6, 0.7, 0.8], help="peak ratios")
    c.add_argument("--factors", nargs="+", type=float, default=[1.0], help="pixel threshold multipliers")
    args = parser.parse_args(argv)
    return dump(args) if args.command == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
