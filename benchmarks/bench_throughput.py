"""Throughput and latency under concurrent clients against the real service, micro-batching off and on.

Run from the repository root:
    python benchmarks/bench_throughput.py --model-dir models/demo [--wait-quiet 1.5]
Prints a table and writes benchmarks/results/throughput.json. Each mode has its own `python -m service` on
loopback, both running at once; every client posts the same pre-built part back to back (closed loop) for
--duration-s after a warm-up, in --rounds rounds that alternate between the modes. Throughput is the median
over rounds; latency percentiles are over all answers. Peak RSS is each service process's VmHWM, which only
grows: read after each client level, it is the peak up to and including that level.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_preprocessing import synthetic_part

RESULTS = harness.RESULTS_DIR / "throughput.json"
BATCH_SIZE_METRIC = "bridgenet_batch_size"  # histogram of parts per session run (service.metrics)


def mode_settings(args: argparse.Namespace) -> dict[str, dict[str, str | int | float]]:
    """Service settings per mode. With batching on, admission must let a whole batch into the engine at
    once (max_inflight ≥ batch size), or batches could never grow past max_inflight."""
    common: dict[str, str | int | float] = {
        "providers": "cpu",
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout_s,
    }
    if args.threads:
        common["intra_op_threads"] = args.threads
    off = {**common, "batch_max_size": 1, "max_inflight": args.max_inflight}
    on = {
        **common,
        "batch_max_size": args.batch_max_size,
        "batch_wait_ms": args.batch_wait_ms,
        "max_inflight": max(args.max_inflight, args.batch_max_size),
    }
    return {"batching_off": off, "batching_on": on}


def batch_counts(service: service_load.Service) -> tuple[float, float] | None:
    """(session runs, parts) so far from the batch-size histogram; None when the service has no such metric."""
    runs = service.metric_sum(f"{BATCH_SIZE_METRIC}_count")
    parts = service.metric_sum(f"{BATCH_SIZE_METRIC}_sum")
    return None if runs is None or parts is None else (runs, parts)


def run_modes(
    modes: dict[str, dict[str, str | int | float]], payload: service_load.Payload, args: argparse.Namespace
) -> dict[str, Any]:
    """Both services run side by side; rounds alternate mode within each client level (off, on, off, on)
    so that a change in the machine's background load hits both modes alike."""
    out: dict[str, Any] = {name: {"settings": settings, "levels": []} for name, settings in modes.items()}
    with ExitStack() as stack:
        services = {
            name: stack.enter_context(
                service_load.running_service(
                    args.model_dir.parent, args.model_dir.name, settings, args.cache_dir / "logs" / f"tp-{name}.log"
                )
            )
            for name, settings in modes.items()
        }
        for name, svc in services.items():
            idle = svc.status_kb("VmRSS")
            out[name]["idle_rss_mb"] = round(idle / 1024, 1) if idle else None
        for clients in args.clients:
            rounds: dict[str, list[service_load.LoadRound]] = {name: [] for name in modes}
            counts = {name: batch_counts(svc) for name, svc in services.items()}
            for _ in range(args.rounds):
                for name, svc in services.items():
                    rnd = service_load.closed_loop(svc.url, payload, clients, args.duration_s, args.warmup_s)
                    rounds[name].append(rnd)
            for name, svc in services.items():
                level = service_load.summarise_rounds(rounds[name])
                before, after = counts[name] or (0.0, 0.0), batch_counts(svc)  # no series before the first run
                if after is not None and after[0] > before[0]:
                    # Warm-up requests included: their batches form the same way as the measured ones.
                    level["mean_batch_size"] = round((after[1] - before[1]) / (after[0] - before[0]), 2)
                hwm = svc.status_kb("VmHWM")
                level["peak_rss_mb"] = round(hwm / 1024, 1) if hwm else None
                out[name]["levels"].append(level)
                logging.info("%s, %d clients: %.1f parts/s", name, clients, level["throughput_parts_per_s"])
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"), help="exported model folder")
    p.add_argument("--clients", type=int, nargs="+", default=None, help="concurrent clients (default 1 4 16)")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per round (default 8)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per mode and level (default 3; quick 1)")
    p.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds first (default 2)")
    p.add_argument("--part-size", default="native", help="uploaded part side, or 'native' for the model's S")
    p.add_argument("--batch-max-size", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--max-inflight",
        type=int,
        default=2,
        help="admission slots with batching off (the service's default); batching on uses at least the batch size",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="queue places: above the client count, so the benchmark measures queueing rather than 429s",
    )
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=60.0,
        help="the services' request timeout: "
        "long enough that 16 queued clients on a contended machine are measured, not refused",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    args.clients = args.clients or ([1, 2] if args.quick else [1, 4, 16])
    args.duration_s = args.duration_s or (0.5 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (0.2 if args.quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    quiet = harness.wait_for_quiet(args.wait_quiet, 900) if args.wait_quiet else None
    manifest = harness.read_manifest(args.model_dir)
    side = int(manifest["image_size"]) if args.part_size == "native" else int(args.part_size)
    rgb, xyz = synthetic_part(side)[:2]
    payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (side, side))
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "command": harness.command_line("bench_throughput.py"),
        "machine": harness.machine(),
        "quiet_wait": quiet,
        "model": {"dir": str(args.model_dir), "backbone": manifest["backbone"], "image_size": manifest["image_size"]},
        "part_hw": [side, side],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "modes": {},
    }
    result["modes"] = run_modes(mode_settings(args), payload, args)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    print(
        f"\n{args.model_dir} ({manifest['backbone']}, S={manifest['image_size']}), {side}×{side} parts, "
        f"{args.rounds} × {args.duration_s:g} s per level, load at start {result['machine']['load_average_start']}"
    )
    rows = []
    for name, mode in result["modes"].items():
        for level in mode["levels"]:
            lat = level.get("latency", {})
            rows.append(
                [
                    name,
                    level["clients"],
                    level["throughput_parts_per_s"],
                    lat.get("median_ms"),
                    lat.get("p95_ms"),
                    level.get("mean_batch_size"),
                    level.get("server_median_ms", {}).get("queue"),
                    level["peak_rss_mb"],
                    sum(level["refused"].values()),
                ]
            )
    harness.print_table(
        ["mode", "clients", "parts/s", "p50 ms", "p95 ms", "batch", "queue ms", "peak RSS MB", "refused"], rows
    )
    off, on = result["modes"]["batching_off"]["levels"], result["modes"]["batching_on"]["levels"]
    result["throughput_on_over_off"] = {
        str(a["clients"]): round(b["throughput_parts_per_s"] / a["throughput_parts_per_s"], 3)
        for a, b in zip(off, on, strict=True)
        if a["throughput_parts_per_s"] > 0
    }
    print(f"throughput batching on / off by clients: {result['throughput_on_over_off']}")
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
