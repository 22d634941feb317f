"""`python -m training ensemble`: finished runs of different seeds → one run folder whose model is the
mean of their heads (training.model.ensemble), calibrated on the validation split like a trained run.

The folder is a run like any other: `evaluate --run`, `export --run` and `score_ranking.py` read it. Its
model file holds one trainable state per member; its report names the members and their selected epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import runs
from training.calibration.validation import calibrate
from training.config import TrainConfig
from training.data.prepared import prepare_split
from training.evaluation.report import write_train_report

log = logging.getLogger(__name__)


def check_members(configs: list[TrainConfig], run_dirs: list[Path]) -> None:
    """Members must be the same training but for the seed, on a data set with a validation split."""
    if len(configs) < 2:
        raise ValueError(f"an ensemble needs at least 2 runs, got {len(configs)}")
    first = configs[0].to_dict()
    for run_dir, config in zip(run_dirs[1:], configs[1:], strict=True):
        differ = sorted(k for k, v in config.to_dict().items() if k != "seed" and first[k] != v)
        if differ:
            raise ValueError(f"{run_dir} differs from {run_dirs[0]} in {differ}: members may differ in --seed only")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs with the same seed train the same model: seeds {seeds}")
    validation = Path(configs[0].data) / configs[0].category / "validation"
    if not (validation.is_dir() and any(validation.iterdir())):
        # Without it each run held out other training parts (by its seed), which another member trained on.
        raise ValueError(f"{validation} is missing: an ensemble is calibrated on the data set's validation split")


def combine(run_dirs: list[Path], out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write the ensemble of `run_dirs` into `out`; returns its report."""
    t0 = time.perf_counter()
    if (out / runs.MODEL_FILE).exists():
        raise FileExistsError(f"{out} already holds a model: choose a new --out")
    configs = [TrainConfig.load(d / runs.CONFIG_FILE) for d in run_dirs]
    check_members(configs, run_dirs)
    reports, states = [], []
    for d in run_dirs:
        model_file = d / runs.MODEL_FILE
        if not model_file.is_file() or not (d / runs.REPORT_FILE).is_file():
            raise FileNotFoundError(f"{d} has no {runs.MODEL_FILE} or {runs.REPORT_FILE}: the run has not finished")
        saved = torch.load(model_file, map_location="cpu", weights_only=True)
        if "state" not in saved:
            raise ValueError(f"{d} is an ensemble itself: combine its member runs instead")
        states.append(saved["state"])
        reports.append(json.loads((d / runs.REPORT_FILE).read_text()))
    config = configs[0]
    model = runs.build_ensemble(config, states).eval()
    validation = prepare_split(
        Path(config.data), config.category, "validation", config.preprocessing, progress=progress
    )
    calibration = calibrate(model, validation, config, torch.device("cpu"))

    out.mkdir(parents=True, exist_ok=True)
    config.save(out / runs.CONFIG_FILE)
    torch.save({"members": states, "epochs": [r["selection"]["epoch"] for r in reports]}, out / runs.MODEL_FILE)
    (out / runs.CALIBRATION_FILE).write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    n_keep = min(4, len(validation))
    np.savez_compressed(out / runs.SAMPLES_FILE, rgb=validation.rgb[:n_keep], depth=validation.depth[:n_keep])
    members = [
        {"run": d.resolve().name, "seed": c.seed, "method": r["selection"]["method"], "epoch": r["selection"]["epoch"]}
        for d, c, r in zip(run_dirs, configs, reports, strict=True)
    ]
    report = {
        **{k: reports[0][k] for k in ("category", "n_train_parts", "n_train_items_per_epoch", "samples_per_epoch")},
        "selection": {
            "method": "ensemble",
            "epoch": [m["epoch"] for m in members],
            "validation_source": "validation split",
            "criterion": f"mean of the patch scores of {len(members)} runs (seeds "
            f"{', '.join(str(m['seed']) for m in members)}), each with its own selected weights",
            "members": members,
            "metrics": {},
        },
        "n_validation_parts": len(validation),
        "calibration": calibration.to_dict(),
        # The members' training plus this step: what it took to make the model.
        "train_seconds": sum(r["train_seconds"] for r in reports) + time.perf_counter() - t0,
    }
    write_train_report(out, config, report, [])
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="finished run folders, differing in --seed only")
    p.add_argument("--out", type=Path, required=True, help="the ensemble's run folder (created)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    report = combine(args.runs, args.out, progress=not args.no_progress)
    seeds = ", ".join(str(m["seed"]) for m in report["selection"]["members"])
    print(
        f"ensemble of {len(args.runs)} runs (seeds {seeds}) written to {args.out}; "
        f"threshold {report['calibration']['threshold']:.4f}"
    )
    return 0
