"""Parts per second of a CPU inspection station: model folders × service settings, side by side.

Every configuration runs as its own `python -m service` on loopback; closed-loop clients (the line's
stations) post parts back to back, the configurations taking turns round after round so that a change of
load on the machine hits all of them alike. The first configuration is the reference of the paired
ratios. It answers "how many parts per second does a 2-core station serve with the
int8 model, and with which settings": the model's own threads, ONNX Runtime's spinning and micro-batching
all trade per-part latency against throughput once two requests share two cores.

    python benchmarks/bench_station.py --fp32 models/demo --int8 out/models/demo-int8

The part is the synthetic 256×256 one of the other benchmarks (PNG + TIFF), or any part given with
--rgb/--xyz. Prints a table and writes benchmarks/results/station.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_preprocessing import synthetic_part

RESULTS = harness.RESULTS_DIR / "station.json"

# name → (model: "fp32" or "int8", settings beyond the common ones). The service's defaults first: one
# ONNX Runtime thread per core for each request in flight, spinning on, no micro-batching.
CONFIGURATIONS: dict[str, tuple[str, dict[str, str | int | float]]] = {
    "fp32, defaults": ("fp32", {}),
    "int8, defaults": ("int8", {}),
    "int8, 1 thread per request": ("int8", {"intra_op_threads": 1}),
    "int8, 1 thread, no spinning": ("int8", {"intra_op_threads": 1, "ort_spin_wait": "false"}),
    "int8, batches of 2": ("int8", {"batch_max_size": 2, "batch_wait_ms": 2}),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, default=Path("models/demo"), help="fp32 model folder")
    p.add_argument("--int8", type=Path, required=True, help="int8 model folder (export --precision int8)")
    p.add_argument("--rgb", type=Path, default=None, help="the part's RGB file (default: synthetic 256×256)")
    p.add_argument("--xyz", type=Path, default=None, help="the part's point cloud file")
    p.add_argument("--configs", nargs="+", default=list(CONFIGURATIONS), help="which configurations, by name")
    p.add_argument("--clients", type=int, default=2, help="closed-loop clients")
    p.add_argument("--rounds", type=int, default=None, help="rounds per configuration (default 4; quick 1)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per round (default 10; quick 0.5)")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGURATIONS))
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGURATIONS)}")
    if (args.rgb is None) != (args.xyz is None):
        p.error("--rgb and --xyz go together")
    args.rounds = args.rounds or (1 if args.quick else 4)
    args.seconds = args.seconds or (0.5 if args.quick else 10.0)
    return args


def payload(args: argparse.Namespace) -> tuple[service_load.Payload, str]:
    if args.rgb is None:
        rgb, xyz = synthetic_part(256)[:2]
        png, tiff = service_load.encode_part(rgb, xyz)
        return service_load.build_payload(png, tiff, (256, 256), "none"), "synthetic 256×256, PNG + TIFF"
    import cv2

    image = cv2.imread(str(args.rgb), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"cannot read {args.rgb} as an image")
    height, width = image.shape[:2]
    part = service_load.build_payload(args.rgb.read_bytes(), args.xyz.read_bytes(), (height, width), "none")
    return part, f"{args.rgb.name} + {args.xyz.name}, {height}×{width}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = harness.start_result("station", "bench_station.py", args.wait_quiet)
    part, described = payload(args)
    folders = {"fp32": args.fp32, "int8": args.int8}
    common: dict[str, str | int | float] = {
        "providers": "cpu",
        "batch_max_size": 1,
        "max_inflight": args.clients,
        "request_timeout_s": 60,
    }
    configs = {name: (folders[CONFIGURATIONS[name][0]], common | CONFIGURATIONS[name][1]) for name in args.configs}
    with tempfile.TemporaryDirectory(prefix="bench-station-") as tmp:
        runs = service_load.alternating_throughput(configs, part, args.clients, args.rounds, args.seconds, Path(tmp))
    result |= {
        "part": described,
        "clients": args.clients,
        "settings": {name: dict(settings) for name, (_folder, settings) in configs.items()},
        "models": {name: str(folders[CONFIGURATIONS[name][0]]) for name in configs},
        "runs": runs,
    }
    print(f"\n{args.clients} closed-loop clients, {described}, {args.rounds} rounds of {args.seconds:g} s each")
    first = args.configs[0]
    harness.print_table(
        ["configuration", "parts/s (median round)", "range", f"× {first} (paired)", "latency median ms"],
        [
            [
                name,
                runs[name]["throughput_parts_per_s"],
                str(runs[name]["throughput_range"]),
                1.0 if name == first else runs["paired_ratio"][f"{name}/{first}"],
                runs[name]["latency"]["median_ms"] if "latency" in runs[name] else None,
            ]
            for name in configs
        ],
    )
    result["load_at_end"] = harness.wait_for_quiet(1e9, 0)
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
