"""int8 variants of one run's fp32 model, compared with it on the run's VALIDATION parts (never the test split).

    python benchmarks/int8_sweep.py --run RUN --model-dir models/NAME-fp32 --float-stem-convs 2 6 12 \
        --calibration percentile minmax --out benchmarks/results/int8_sweep_NAME.json

Each variant is made by the exporter's own code (`training.export.precision.quantise_int8`, calibrated on the run's
good training parts as `export --precision int8` does) and run beside fp32 on the validation split's good
parts plus synthetic texture anomalies made from them (training's validation set, with `--anomaly-copies`
anomalies per part from further seeds so that the AUPRO is steadier). Printed per variant: the map's mean
|difference| to fp32 (also after removing each part's median shift: the part of the difference that can
reorder pixels), the largest |score difference|, I-AUROC and AUPRO@0.3 on that validation set, and the CPU
time of one run on one intra-op thread (work per part, paired with fp32; see bench_precision.py). This is
how docs/BENCHMARKS.md, "int8", chose the exporter's defaults; the test split is measured afterwards with
`python -m training evaluate --model` on the exported folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness

from training.data.dataset import ValidationSet
from training.evaluation import metrics
from training.export import precision
from training.scoring.engine import open_session, score_with_session

RESULTS = Path(__file__).resolve().parent / "results" / "int8_sweep.json"


def validation_set(run_dir: Path, anomaly_copies: int) -> tuple[ValidationSet, int, Any]:
    """The run's validation set (good parts, then anomalies) with `anomaly_copies` anomalies per good part,
    the number of good parts, and the run's splits (for the calibration parts)."""
    from training.anomalies.textures import load_textures
    from training.config import TrainConfig
    from training.data.dataset import AnomalyOptions, synthetic_validation
    from training.train.splits import load_splits

    config = TrainConfig.load(run_dir / "config.json")
    splits = load_splits(config, progress=False)
    options = AnomalyOptions.from_config(config)
    textures = load_textures(Path(config.textures) if config.textures else None)
    val = synthetic_validation(splits.validation, textures, options)  # training's own: one anomaly per part
    n = len(splits.validation)
    extra = [
        options.make(splits.validation, i, textures, np.random.default_rng((options.seed, 20_011 + c, i)))
        for c in range(anomaly_copies - 1)
        for i in range(n)
    ]
    if extra:
        val = ValidationSet(
            rgb=np.concatenate([val.rgb, np.stack([a.rgb for a in extra])]).astype(np.float32),
            depth=np.concatenate([val.depth, np.stack([a.depth for a in extra])]).astype(np.float32),
            labels=np.concatenate([val.labels, np.ones(len(extra), bool)]),
            masks=np.concatenate([val.masks, np.stack([a.mask for a in extra])]),
        )
    return val, n, splits


def against_fp32(val: ValidationSet, n_good: int, ref: tuple, got: tuple) -> dict[str, float]:
    (ref_scores, ref_maps), (scores, maps) = ref, got
    diff = maps - ref_maps
    shift = np.median(diff.reshape(len(diff), -1), axis=1)[:, None, None]
    return {
        "map_mean_abs_diff": round(float(np.abs(diff).mean()), 5),
        "map_mean_abs_diff_good": round(float(np.abs(diff[:n_good]).mean()), 5),
        "map_mean_signed_diff": round(float(diff.mean()), 5),
        "map_mean_abs_diff_unshifted": round(float(np.abs(diff - shift).mean()), 5),
        "score_max_abs_diff": round(float(np.abs(scores - ref_scores).max()), 5),
    }


def accuracy(val: ValidationSet, scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    return {
        "val_image_auroc": round(metrics.image_auroc(val.labels, scores), 4),
        "val_aupro": round(metrics.aupro(val.masks, maps), 4),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="training run folder (its data is read)")
    p.add_argument("--model-dir", required=True, type=Path, help="the run's fp32 export (model.onnx)")
    p.add_argument("--float-stem-convs", type=int, nargs="+", default=[2, 6, 12], help="variants' float convs")
    p.add_argument("--calibration", nargs="+", choices=["percentile", "minmax"], default=["percentile"])
    p.add_argument("--calibration-parts", type=int, default=precision.Int8Options.max_calibration_parts)
    p.add_argument("--anomaly-copies", type=int, default=4, help="synthetic anomalies per validation part")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (one-thread CPU time)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    result: dict[str, Any] = {
        "command": harness.command_line("int8_sweep.py"),
        "machine": harness.machine(),
        "load_at_start": harness.wait_for_quiet(1e9, 0),
    }
    val, n_good, splits = validation_set(args.run, args.anomaly_copies)
    chosen = sorted(set(splits.train_indices))[: args.calibration_parts]  # as training/export/exporter.py calibrates
    calib = splits.train.subset(chosen)
    fp32 = args.model_dir / "model.onnx"
    ref = score_with_session(open_session(fp32), val.rgb, val.depth)
    rows: dict[str, dict[str, Any]] = {"fp32": accuracy(val, *ref)}
    paths = {"fp32": fp32}
    with tempfile.TemporaryDirectory(prefix="int8-sweep-") as tmp:
        for calibration in args.calibration:
            for stem in args.float_stem_convs:
                name = f"float_stem_convs={stem}, {calibration}"
                options = precision.Int8Options(
                    float_stem_convs=stem, calibration=calibration, max_calibration_parts=args.calibration_parts
                )
                paths[name] = Path(tmp) / f"{len(paths)}.onnx"
                precision.quantise_int8(fp32, paths[name], calib.rgb, calib.depth, options)
                got = score_with_session(open_session(paths[name]), val.rgb, val.depth)
                rows[name] = against_fp32(val, n_good, ref, got) | accuracy(val, *got)
        sessions = {name: harness.ort_session(path, threads=1) for name, path in paths.items()}
        feed = {"rgb": val.rgb[:1], "depth": val.depth[:1]}
        fns = {name: partial(s.run, ["scores", "maps"], feed) for name, s in sessions.items()}
        cpu = harness.interleaved(fns, args.repeats, 3, 0.0, clock=time.thread_time)
    base = np.asarray(cpu["fp32"])
    for name, t in cpu.items():
        rows[name] |= {
            "cpu_median_ms": harness.stats(t)["median_ms"],
            "cpu_speedup_paired": round(float(np.median(base / np.asarray(t))), 3),
        }
    result |= {
        "validation": {"good_parts": n_good, "anomalies": int(val.labels.sum()), "source": "validation split"},
        "calibration_parts": len(chosen),
        "variants": rows,
        "load_at_end": harness.wait_for_quiet(1e9, 0),
    }
    print(f"\n{n_good} good validation parts + {int(val.labels.sum())} synthetic anomalies; CPU: one thread")
    keys = ["map_mean_abs_diff", "map_mean_abs_diff_unshifted", "score_max_abs_diff", "val_image_auroc"]
    keys += ["val_aupro", "cpu_median_ms", "cpu_speedup_paired"]
    harness.print_table(["variant", *keys], [[name, *(r.get(k) for k in keys)] for name, r in rows.items()])
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
