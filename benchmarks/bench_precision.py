"""fp32 vs reduced-precision sessions of one model, side by side: session time (paired), per-operator
profile, and end-to-end parts/s through the service.

The int8 variants are made here from the fp32 model folder with training/export/precision.py (the exporter's own
code; no torch): the time of a graph does not depend on its calibration, so the run's saved validation
parts (`--run-dir`) or synthetic parts calibrate them. The accuracy of an int8 export is measured by
`python -m training evaluate --model` on the exported folder, not here (docs/BENCHMARKS.md, "int8").

    python benchmarks/bench_precision.py --model-dir models/demo --int8-dir models/demo-int8 --wait-quiet 1.5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_preprocessing import synthetic_part

from service.preprocessing import PreprocessConfig, preprocess_part
from training.export import precision

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"

_DEFAULT = precision.Int8Options()
# name → (per_channel, float_stem_convs, float_head); "int8" is the exporter's default.
INT8_VARIANTS: dict[str, tuple[bool, int, bool]] = {
    "int8": (_DEFAULT.per_channel, _DEFAULT.float_stem_convs, _DEFAULT.float_head),
    "int8_stem2": (True, 2, True),  # the first round's default (2 float convolutions)
    "int8_per_tensor": (False, _DEFAULT.float_stem_convs, True),
    "int8_all_convs": (True, 0, True),
    "int8_head_too": (True, _DEFAULT.float_stem_convs, False),
    "int8_gemms_only": (True, 10**6, True),  # every convolution float: only the adaptor and discriminator int8
}


def calibration_parts(model_dir: Path, run_dir: Path | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if run_dir is not None and (run_dir / "samples.npz").is_file():
        saved = np.load(run_dir / "samples.npz")
        return saved["rgb"].astype(np.float32), saved["depth"].astype(np.float32)
    config = PreprocessConfig.from_dict(harness.read_manifest(model_dir)["preprocessing"])
    parts = [preprocess_part(*synthetic_part(400, seed=i)[:2], config) for i in range(n)]
    return np.stack([p.rgb for p in parts]), np.stack([p.depth for p in parts])


def make_variants(fp32: Path, folder: Path, rgb: np.ndarray, depth: np.ndarray, names: list[str]) -> dict[str, Path]:
    paths = {"fp32": fp32}
    for name in names:
        if name == "fp16":
            precision.convert_fp16(fp32, folder / "fp16.onnx")
        else:
            per_channel, stem, head = INT8_VARIANTS[name]
            options = precision.Int8Options(per_channel=per_channel, float_stem_convs=stem, float_head=head)
            precision.quantise_int8(fp32, folder / f"{name}.onnx", rgb, depth, options)
        paths[name] = folder / f"{name}.onnx"
    return paths


def profile(path: Path, feed: dict[str, np.ndarray], runs: int, prefix: str) -> dict[str, float]:
    """ONNX Runtime's own profile: median over runs of the kernel ms spent in each operator type."""
    session = harness.ort_session(path, profile_prefix=prefix)
    for _ in range(runs):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    per_run: dict[tuple[str, int], float] = defaultdict(float)
    run_index = -1
    for event in trace:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            run_index += 1  # a run's node events come before its model_run event: index them by the runs ended
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_run[(event.get("args", {}).get("op_name", "?"), run_index + 1)] += event["dur"] / 1e3
    by_op: dict[str, list[float]] = defaultdict(list)
    for (op, _run), ms in per_run.items():
        by_op[op].append(ms)
    medians = {op: float(np.median(v)) for op, v in by_op.items()}
    return {op: round(ms, 3) for op, ms in sorted(medians.items(), key=lambda kv: -kv[1])}


def cpu_times(paths: dict[str, Path], feed: dict[str, np.ndarray], repeats: int) -> dict[str, list[float]]:
    """CPU ms of each graph's run on one intra-op thread, in shuffled rounds.

    With one thread ONNX Runtime computes on the calling thread, so that thread's CPU time is the work per
    part: unlike wall time it hardly moves when other processes share the cores (the 2-core machine this
    runs on usually has other work)."""
    sessions = {name: harness.ort_session(path, threads=1) for name, path in paths.items()}
    fns = {name: partial(s.run, ["scores", "maps"], feed) for name, s in sessions.items()}
    return harness.interleaved(fns, repeats, 3, 0.0, clock=time.thread_time)


def service_throughput(
    folders: dict[str, Path], clients: int, rounds: int, seconds: float, log_dir: Path
) -> dict[str, Any]:
    """Closed-loop parts/s of each model folder through a real service, the folders alternating per round."""
    rgb, xyz = synthetic_part(256)[:2]
    png, tiff = service_load.encode_part(rgb, xyz)
    payload = service_load.build_payload(png, tiff, (256, 256), "none")
    settings: dict[str, str | int | float] = {
        "providers": "cpu",
        "batch_max_size": 1,
        "max_inflight": clients,
        "request_timeout_s": 60,
    }
    configs = {name: (folder, settings) for name, folder in folders.items()}
    return service_load.alternating_throughput(configs, payload, clients, rounds, seconds, log_dir)


def latency(summary: dict[str, Any]) -> float | None:
    return summary["latency"]["median_ms"] if "latency" in summary else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"), help="fp32 model folder")
    p.add_argument("--run-dir", type=Path, default=None, help="its training run (saved parts calibrate)")
    p.add_argument("--int8-dir", type=Path, default=None, help="an exported int8 folder for the end-to-end rounds")
    p.add_argument("--variants", nargs="+", default=[*INT8_VARIANTS, "fp16"], help="variants beside fp32")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 30; quick 3)")
    p.add_argument("--batch", type=int, default=1, help="parts per session run")
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=2, help="closed-loop clients in the end-to-end rounds")
    p.add_argument("--e2e-rounds", type=int, default=None, help="end-to-end rounds per folder (default 4; quick 1)")
    p.add_argument("--e2e-seconds", type=float, default=None, help="seconds per round (default 10; quick 1)")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 30)
    args.e2e_rounds = args.e2e_rounds or (1 if args.quick else 4)
    args.e2e_seconds = args.e2e_seconds or (1.0 if args.quick else 10.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    load_start = harness.wait_for_quiet(args.wait_quiet, 900) if args.wait_quiet else None
    result: dict[str, Any] = {
        "command": harness.command_line("bench_precision.py"),
        "machine": harness.machine(),
        "load_at_start": load_start,
    }
    manifest = harness.read_manifest(args.model_dir)
    size = int(manifest["image_size"])
    rgb, depth = calibration_parts(args.model_dir, args.run_dir, 4)
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        folder = Path(tmp)
        paths = make_variants(args.model_dir / "model.onnx", folder, rgb, depth, args.variants)
        feed = {"rgb": np.repeat(rgb[:1], args.batch, 0), "depth": np.repeat(depth[:1], args.batch, 0)}
        sessions = {name: harness.ort_session(path) for name, path in paths.items()}
        fns = {name: partial(s.run, ["scores", "maps"], feed) for name, s in sessions.items()}
        times = harness.interleaved(fns, args.repeats, 3, args.gap_ms / 1e3)
        base = np.asarray(times["fp32"])
        rows, table = {}, []
        for name, t in times.items():
            st = harness.stats(t)
            paired = float(np.median(base / np.asarray(t)))
            st |= {
                "speedup_paired": round(paired, 3),
                "speedup_medians": round(float(np.median(base) / np.median(t)), 3),
                "parts_per_s_median": round(1e3 * args.batch / st["median_ms"], 1),
                "parts_per_s_min": round(1e3 * args.batch / st["min_ms"], 1),
                "file_mb": round(paths[name].stat().st_size / 2**20, 2),
            }
            rows[name] = st
            table.append([name, st["median_ms"], st["p95_ms"], st["min_ms"], st["speedup_paired"], st["file_mb"]])
        result["sessions"] = {"image_size": size, "batch": args.batch, "paths": rows}
        print(f"\nsession.run, batch {args.batch}, {size} px, {args.repeats} rounds interleaved")
        harness.print_table(["graph", "median ms", "p95 ms", "min ms", "× fp32 (paired)", "MB"], table)
        cpu = cpu_times(paths, feed, args.repeats)
        cpu_base = np.asarray(cpu["fp32"])
        result["cpu_one_thread"] = {
            name: harness.stats(t) | {"speedup_paired": round(float(np.median(cpu_base / np.asarray(t))), 3)}
            for name, t in cpu.items()
        }
        print(f"\nCPU time of session.run on one intra-op thread, {args.repeats} rounds interleaved")
        harness.print_table(
            ["graph", "median CPU ms", "min CPU ms", "× fp32 (paired)"],
            [[n, r["median_ms"], r["min_ms"], r["speedup_paired"]] for n, r in result["cpu_one_thread"].items()],
        )
        profiles = {}
        for name in ("fp32", "int8"):
            if name in paths:
                profiles[name] = profile(paths[name], feed, max(3, args.repeats // 3), str(folder / f"prof-{name}"))
        result["profile_ms_per_run"] = profiles
        if profiles:
            ops = sorted({op for p in profiles.values() for op in p}, key=lambda op: -profiles["fp32"].get(op, 0.0))
            print("\nONNX Runtime profile, kernel ms per run by operator type (median over runs)")
            harness.print_table(["op", *profiles], [[op, *(p.get(op) for p in profiles.values())] for op in ops])
        if args.int8_dir is not None:
            folders = {"fp32": args.model_dir, "int8": args.int8_dir}
            e2e = service_throughput(folders, args.clients, args.e2e_rounds, args.e2e_seconds, folder / "logs")
            result["end_to_end"] = e2e | {"clients": args.clients, "part": "256×256 PNG + TIFF"}
            print(f"\nend to end: POST /v1/predict, {args.clients} closed-loop clients, 256×256 parts")
            harness.print_table(
                ["model", "parts/s (median round)", "range", "latency median ms"],
                [
                    [
                        n,
                        e2e[n]["throughput_parts_per_s"],
                        str(e2e[n]["throughput_range"]),
                        e2e[n]["latency"]["median_ms"],
                    ]
                    for n in folders
                ],
            )
            print("paired ratio:", e2e.get("paired_ratio"))
    result["load_at_end"] = harness.wait_for_quiet(1e9, 0)
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
