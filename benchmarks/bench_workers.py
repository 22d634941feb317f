"""Parts/s of the service with 1 and 2 worker processes (BRIDGENET_WORKERS), and the demo model's latency
at one client under both.

Run from the repository root:
    python benchmarks/bench_workers.py [--model-dir models/demo] [--sizes 256 400 800] [--clients 8]
                                       [--rounds 3] [--seconds 5]
Prints a table and writes benchmarks/results/workers.json.

The fake fast model (the demo's inputs, outputs and preprocessing, a near-free graph: a stand-in for a model
on a GPU, so the CPU work around the session is what limits) is served twice at once, by 1 and by 2
workers (one intra-op thread each, no spinning, audit on); `--clients` closed-loop clients post the demo's
good sample part, resized to each size, to one then the other, round after round, so a change of load on
the machine hits both alike; `paired` is the median over rounds of the 2-worker/1-worker ratio. Beside it,
each service's CPU time per part (all its processes): what the workers cost, whatever share of the cores the
machine's other load leaves them. Then the demo model at one client, the same way: parts/s at one client
is the inverse of its latency, so a paired ratio ≥ 1 means not slower with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_cpu_cost import resized_part
from fake_graph import build_graph, write_fake_model

RESULTS = harness.RESULTS_DIR / "workers.json"
SETTINGS: dict[str, str | int | float] = {
    "intra_op_threads": 1,
    "ort_spin_wait": "false",
    "audit": "on",
    "providers": "cpu",
    "max_inflight": 4,
    "max_queue": 32,
}


def compare(
    folder: Path, payload: service_load.Payload, clients: int, args: argparse.Namespace, tmp: Path, label: str
) -> dict[str, Any]:
    configs = {
        f"{n} worker{'s' if n > 1 else ''}": (folder, {**SETTINGS, "workers": n, "data_dir": str(tmp / f"{label}-{n}")})
        for n in (1, 2)
    }
    return service_load.alternating_throughput(
        configs, payload, clients, args.rounds, args.seconds, tmp / "logs", cpu_per_part=True
    )


def table_row(label: str, measured: dict[str, Any]) -> list[Any]:
    one, two = measured["1 worker"], measured["2 workers"]
    return [
        label,
        one["throughput_parts_per_s"],
        two["throughput_parts_per_s"],
        measured["paired_ratio"]["2 workers/1 worker"],
        one.get("latency", {}).get("median_ms"),
        two.get("latency", {}).get("median_ms"),
        one["cpu_ms_per_part"],
        two["cpu_ms_per_part"],
    ]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=harness.REPO / "models" / "demo")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 400, 800], help="part side, pixels")
    p.add_argument("--clients", type=int, default=8, help="closed-loop clients on the fake model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round and configuration")
    p.add_argument("--no-demo", action="store_true", help="skip the demo model's latency at one client")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.seconds, args.clients = args.sizes[:1], 1, 1.0, 2
    return args


def main() -> int:
    args = parse_args()
    result = harness.start_result("workers", "bench_workers.py", args.wait_quiet)
    manifest = harness.read_manifest(args.model_dir)
    result["settings"] = {**SETTINGS, "clients": args.clients, "rounds": args.rounds, "seconds": args.seconds}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp_name:
        tmp = Path(tmp_name)
        size = int(manifest["image_size"])
        fake = write_fake_model(
            tmp / "models", "fake", graph=build_graph(size), size=size, preprocessing=manifest["preprocessing"]
        )
        result["fake"] = {}
        for side in args.sizes:
            rgb, xyz = resized_part("good", side)
            payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (side, side))
            measured = compare(fake, payload, args.clients, args, tmp, f"fake-{side}")
            result["fake"][str(side)] = measured
            rows.append(table_row(f"fake {side} px ×{args.clients}", measured))
        if not args.no_demo:
            rgb, xyz = resized_part("good", size)
            payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (size, size))
            measured = compare(args.model_dir, payload, 1, args, tmp, "demo")
            result["demo_one_client"] = measured
            rows.append(table_row(f"{args.model_dir.name} {size} px ×1", measured))
    print("parts/s with 1 and 2 worker processes; paired: median over rounds of the per-round ratio 2/1")
    headers = ["model, part, clients", "1 worker/s", "2 workers/s", "paired 2/1", "1w median ms", "2w median ms"]
    headers += ["1w CPU ms/part", "2w CPU ms/part"]
    harness.print_table(headers, rows)
    result["table"] = [dict(zip(headers, row, strict=True)) for row in rows]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
