"""ONNX session time of exported models side by side: what one model costs against another (a single
network against the demo's two-head ensemble, say), the same inputs, timed interleaved.

Run from the repository root:
    python benchmarks/bench_models.py --model-dirs MODEL_A MODEL_B [...] [--threads 2] [--repeats 60]
        [--wait-quiet 1.5] [--out benchmarks/results/models.json]
Each model's session comes from the service's factory; every round runs each model once on one random
part of the first model's input shape (batch 1). Ratios are paired: per round, the model's time over the
first model's, then the median.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness


def inputs_for(manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """One random part in the manifest's input shapes (its dynamic batch axis set to 1)."""
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal([1 if isinstance(d, str) else int(d) for d in shape]).astype(np.float32)
        for name, shape in manifest["inputs"].items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model-dirs", type=Path, nargs="+", required=True, help="exported model folders; the first is the base"
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    p.add_argument("--repeats", type=int, default=60, help="rounds")
    harness.add_common_arguments(p, Path("benchmarks/results/models.json"))
    args = p.parse_args(argv)
    if len(args.model_dirs) < 2:
        p.error("--model-dirs needs at least two model folders to compare")
    result = harness.start_result("models", "bench_models.py", args.wait_quiet)
    manifests = [harness.read_manifest(d) for d in args.model_dirs]
    names = [f"{i}:{d.name}" for i, d in enumerate(args.model_dirs)]
    sessions = {
        n: harness.ort_session(d / "model.onnx", threads=args.threads)
        for n, d in zip(names, args.model_dirs, strict=True)
    }
    feed = inputs_for(manifests[0])
    repeats = 3 if args.quick else args.repeats
    times = harness.interleaved({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}, repeats)
    base = np.asarray(times[names[0]])
    rows, models = [], []
    for name, d in zip(names, args.model_dirs, strict=True):
        ratio = float(np.median(np.asarray(times[name]) / base))
        size_mb = (d / "model.onnx").stat().st_size / 1e6
        s = harness.stats(times[name])
        models.append(
            {"name": name, "model_dir": str(d), "onnx_mb": round(size_mb, 2), **s, "paired_ratio": round(ratio, 3)}
        )
        rows.append([name, round(size_mb, 1), s["median_ms"], s["p95_ms"], s["min_ms"], round(ratio, 2)])
    harness.print_table(["model", "ONNX MB", "median ms", "p95 ms", "min ms", "× first (paired)"], rows)
    result.update({"threads": args.threads, "repeats": repeats, "models": models})
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
