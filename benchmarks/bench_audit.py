"""Cost of the audit trail per answered prediction: record + outbox rows (+ evidence) on SQLite, beside
BRIDGENET_AUDIT=off.

Run from the repository root:

    python benchmarks/bench_audit.py                 # in-process: the call the predict handler makes
    python benchmarks/bench_audit.py --mode http     # two real services (audit on / off), POST /v1/predict

`write` times `Records.record_prediction` (thread hand-off, record, two outbox rows, commit; for NG parts
also the evidence archive) against the same call with audit off, interleaved. `http` starts the service
twice and compares client-side latency; it measures the audit trail only once the predict handler calls
`record_prediction`. Prints a table and writes benchmarks/results/audit.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness

from service.config import Settings
from service.metrics import Metrics
from service.records.runtime import Records

RESULTS = harness.RESULTS_DIR / "audit.json"


def answer(request_id: str, *, ng: bool) -> dict[str, Any]:
    """A predict answer as the handler has it (JSON form, no map)."""
    return {
        "model": {"name": "demo", "version": "1.0.0"},
        "part_id": f"line1-{request_id}",
        "score": 0.8 if ng else 0.2,
        "threshold": 0.5,
        "threshold_source": "manifest",
        "is_anomalous": ng,
        "anomaly_map": None,
        "defect_area_fraction": 0.01 if ng else 0.0,
        "timings_ms": {"queue": 0.1, "decode": 3.0, "preprocess": 5.0, "inference": 20.0, "total": 30.0},
        "provider": "CPUExecutionProvider",
        "request_id": request_id,
    }


def run_write(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    # Upload sizes of a 400×400 part: PNG RGB ≈ 0.4 MB, float32 TIFF point cloud ≈ 1.9 MB.
    rgb, xyz = rng.bytes(400_000), rng.bytes(1_900_000)
    amap = rng.random((400, 400), dtype=np.float32)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        # Push destinations that nobody dispatches to (no dispatcher task): the outbox rows are written,
        # nothing competes for the CPU while the writes are timed.
        base = {"data_dir": Path(tmp) / "data", "archive": "ng"}
        on = loop.run_until_complete(Records.start(Settings(audit="on", **base), Metrics()))  # type: ignore[arg-type]
        off = loop.run_until_complete(Records.start(Settings(audit="off", **base), Metrics()))  # type: ignore[arg-type]
        assert on.recorder is not None
        on.recorder.destinations = ("mqtt", "webhook")
        ids = (f"req-{i:07d}" for i in itertools.count())

        def call(records: Records, *, ng: bool) -> None:
            loop.run_until_complete(
                records.record_prediction(
                    answer(next(ids), ng=ng),
                    rgb=rgb,
                    xyz=xyz,
                    anomaly_map=amap,
                    model_sha256="0" * 64,
                    client="10.0.0.7",
                )
            )

        variants = {
            "audit off": lambda: call(off, ng=False),
            "audit on, OK part": lambda: call(on, ng=False),
            "audit on, NG part + evidence": lambda: call(on, ng=True),
        }
        times = harness.interleaved(variants, repeats=args.repeats, warmup=3, gap_s=0.0)
        db_bytes = sum(p.stat().st_size for p in (Path(tmp) / "data").glob("records.db*"))
        loop.run_until_complete(on.stop())
        loop.run_until_complete(off.stop())
    loop.close()
    stats = {name: harness.stats(t) for name, t in times.items()}
    off_median = stats["audit off"]["median_ms"]
    for s in stats.values():
        s["added_median_ms"] = round(s["median_ms"] - off_median, 3)
    return {"variants": stats, "database_bytes_after": db_bytes, "evidence_bytes_per_ng_part": len(rgb) + len(xyz)}


def run_http(args: argparse.Namespace) -> dict[str, Any]:
    import service_load
    from bench_preprocessing import synthetic_part

    manifest = harness.read_manifest(args.model_dir)
    side = int(manifest["image_size"])
    rgb, xyz = synthetic_part(side)[:2]
    payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (side, side))
    modes: dict[str, dict[str, str | int | float]] = {"audit_off": {"audit": "off"}, "audit_on": {"audit": "on"}}
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        services = {}
        for name, settings in modes.items():
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
            settings = {**settings, "data_dir": str(data_dir), "providers": "cpu"}
            log = args.cache_dir / "logs" / f"audit-{name}.log"
            services[name] = stack.enter_context(
                service_load.running_service(args.model_dir.parent, args.model_dir.name, settings, log)
            )
        rounds: dict[str, list[Any]] = {name: [] for name in modes}
        for _ in range(args.rounds):  # alternate, so background load drifts hit both alike
            for name, svc in services.items():
                rounds[name].append(service_load.closed_loop(svc.url, payload, 1, args.duration_s, 1.0))
        for name, svc in services.items():
            out[name] = service_load.summarise_rounds(rounds[name])
            out[name]["audit_write_count"] = svc.metric_sum("bridgenet_audit_write_seconds_count")
    return {"model_dir": str(args.model_dir), "part_hw": [side, side], "modes": out}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("write", "http"), default="write")
    p.add_argument("--repeats", type=int, default=300, help="write mode: calls per variant")
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"), help="http mode: exported model folder")
    p.add_argument("--rounds", type=int, default=4, help="http mode: alternating rounds per service")
    p.add_argument("--duration-s", type=float, default=10.0, help="http mode: seconds per round")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds, args.duration_s = 20, 1, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = harness.start_result(f"audit_{args.mode}", "bench_audit.py", args.wait_quiet)
    if args.mode == "write":
        result.update(run_write(args))
        rows = [
            [name, s["median_ms"], s["p95_ms"], s["added_median_ms"], s["n"]] for name, s in result["variants"].items()
        ]
        print(f"\nrecord_prediction on SQLite (WAL), {args.repeats} calls per variant, interleaved")
        harness.print_table(["variant", "median ms", "p95 ms", "added (median) ms", "n"], rows)
    else:
        result.update(run_http(args))
        rows = [
            [
                name,
                m["latency"]["median_ms"],
                m["latency"]["p95_ms"],
                m["throughput_parts_per_s"],
                m["audit_write_count"],
            ]
            for name, m in result["modes"].items()
        ]
        print(f"\nPOST /v1/predict, 1 client, {args.rounds} × {args.duration_s:g} s per service")
        harness.print_table(["service", "p50 ms", "p95 ms", "parts/s", "records written"], rows)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
