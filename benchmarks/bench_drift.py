"""The drift watch measured on recorded scores: parts until `drifting` after a shift, false alarms on a stable line.

Run from the repository root after `drift_scores.py` has cached the scores (no model is run here):
    python benchmarks/bench_drift.py benchmarks/results/drift_scores.json --model models/demo \
        --json benchmarks/results/drift.json
A stream is drawn with replacement from the cached scores of one condition, part by part, through the
service's own drift window (`service.lifecycle.drift`) with the model's calibration as the reference and the
verdict the threshold gives. Delay: `--window` stable parts first (a full, settled window), then shifted parts
until the status first says `drifting` (or `--horizon` parts pass: counted as not detected); `--trials` times
per shift. False alarms: `--stable-parts` stable parts, counting each time the status enters `drifting` (and
`watch`), per 10,000 parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.lifecycle.drift import Reference, Window
from service.manifest import read_manifest_json


def _draw(rows: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return rows[rng.integers(0, len(rows), n)]


def _feed(window: Window, rows: np.ndarray, threshold: float) -> None:
    for score, area in rows:
        window.add(float(score), bool(score > threshold), float(area))


def delay(
    ref: Reference, stable: np.ndarray, shifted: np.ndarray, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    delays: list[int] = []
    watch_delays: list[int] = []
    missed = 0
    for _ in range(args.trials):
        window = Window(ref, args.window, args.min_parts)
        _feed(window, _draw(stable, rng, args.window), ref.threshold)
        found = watch_at = None
        for i, (score, area) in enumerate(_draw(shifted, rng, args.horizon), start=1):
            window.add(float(score), bool(score > ref.threshold), float(area))
            status = window.report("m", "v").status
            if watch_at is None and status != "ok":
                watch_at = i
            if status == "drifting":
                found = i
                break
        if found is None:
            missed += 1
        else:
            delays.append(found)
        if watch_at is not None:
            watch_delays.append(watch_at)
    shifted_logit = np.log(shifted[:, 0] / (1 - shifted[:, 0]))
    return {
        "shift_in_sd": float((np.median(shifted_logit) - ref.mean) / ref.std),
        "ng_share": float(np.mean(shifted[:, 0] > ref.threshold)),
        "detected": args.trials - missed,
        "trials": args.trials,
        "delay_median": float(np.median(delays)) if delays else None,
        "delay_p90": float(np.quantile(delays, 0.9)) if delays else None,
        "watch_delay_median": float(np.median(watch_delays)) if watch_delays else None,
    }


def false_alarms(ref: Reference, stable: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    window = Window(ref, args.window, args.min_parts)
    entries = {"watch": 0, "drifting": 0}
    parts_in = {"watch": 0, "drifting": 0}
    previous = "ok"
    for score, area in _draw(stable, rng, args.stable_parts):
        window.add(float(score), bool(score > ref.threshold), float(area))
        status = window.report("m", "v").status
        if status != "ok":
            parts_in[status] += 1
        if status != previous and status != "ok":
            entries[status] += 1
        previous = status
    per = 10_000 / args.stable_parts
    return {
        "parts": args.stable_parts,
        "drifting_alarms_per_10k": entries["drifting"] * per,
        "watch_entries_per_10k": entries["watch"] * per,
        "share_of_parts_drifting": parts_in["drifting"] / args.stable_parts,
        "share_of_parts_watch": parts_in["watch"] / args.stable_parts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="the model folder that scored them")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--min-parts", type=int, default=50)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=2000)
    parser.add_argument("--stable-parts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = json.loads(args.scores.read_text(encoding="utf-8"))
    manifest, _ = read_manifest_json(args.model)
    ref = Reference.from_manifest(manifest, data["threshold"])
    rng = np.random.default_rng(args.seed)
    stable = np.array(data["stable"], dtype=np.float64)
    out: dict[str, Any] = {
        "benchmark": "drift",
        "command": " ".join(["python", "benchmarks/bench_drift.py", *sys.argv[1:]]),
        "model": data["model"],
        "data": data["data"],
        "window": args.window,
        "min_parts": args.min_parts,
        "stable": false_alarms(ref, stable, args, rng),
        "stable_shift_in_sd": delay(ref, stable, stable, argparse.Namespace(**{**vars(args), "trials": 1}), rng)[
            "shift_in_sd"
        ],
        "shifts": {},
    }
    for name, rows in data["shifted"].items():
        out["shifts"][name] = delay(ref, stable, np.array(rows, dtype=np.float64), args, rng)
    s = out["stable"]
    print(f"model {data['model']['name']} {data['model']['version']} on {data['data']}, window {args.window}")
    print(
        f"stable line ({s['parts']} parts, median {out['stable_shift_in_sd']:+.2f} sd from the calibration): "
        f"{s['drifting_alarms_per_10k']:.1f} drifting alarms and {s['watch_entries_per_10k']:.1f} watch entries "
        "per 10,000 parts"
    )
    print("| shift | median shift (sd) | NG share | detected | delay median | delay p90 | first watch |")
    print("|---|---|---|---|---|---|---|")
    for name, r in out["shifts"].items():
        cell = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        print(
            f"| {name} | {r['shift_in_sd']:+.2f} | {r['ng_share']:.0%} | {r['detected']}/{r['trials']} | "
            f"{cell(r['delay_median'])} | {cell(r['delay_p90'])} | {cell(r['watch_delay_median'])} |"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
