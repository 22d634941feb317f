"""What shadowing a candidate costs the line: predict latency with BRIDGENET_SHADOW on and off, one client.

Run from the repository root:
    python benchmarks/bench_shadow.py --model models/demo --rounds 10 --block 20
Two real services (`python -m service`, each in its own session) serve the same model, audit trail on; the
second shadows it with a copy of itself (the same graph: the candidate costs what the model costs). One
client posts the demo's sample part back to back. Paired rounds: per round a block of `--block` requests to
each service, in an order that alternates per round; after a block on the shadowing service the benchmark
waits until its shadow queue is empty, so no candidate work spills into the other service's block. Within
a block each answer may overlap the candidate's work on the part before it: that is the cost being measured.
Reported: median and p99 of each side, and the median of the paired per-round differences of the medians.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from service_load import KeepAliveClient, Service, build_payload, post_part, running_service

SAMPLE = ("rgb.png", "xyz.tiff")


def drained(service: Service, expected: int, timeout_s: float = 120.0) -> None:
    """Wait until the shadow scorer has scored or skipped `expected` parts in all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        scored = service.metric_sum("bridgenet_shadow_scored_total") or 0.0
        skipped = service.metric_sum("bridgenet_shadow_skipped_total") or 0.0
        if scored + skipped >= expected:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the shadow scorer did not finish {expected} parts in {timeout_s:.0f} s")


def block(service: Service, payload: Any, n: int) -> list[float]:
    with KeepAliveClient(service.url) as client:
        out = []
        for _ in range(n):
            result = post_part(client, payload)
            if result.status != 200:
                raise RuntimeError(f"POST /v1/predict answered {result.status}: {service.log_tail()}")
            out.append(result.latency_ms)
        return out


def summary(times: list[float]) -> dict[str, float]:
    a = np.asarray(times)
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "n": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/demo"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rgb", type=Path, help="the part's RGB file (default: the model's sample/rgb.png)")
    parser.add_argument("--xyz", type=Path, help="its point cloud (default: the model's sample/xyz.tiff)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3: the smoke test's mode")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR / "shadow.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block, args.warmup = 2, 3, 1
    result = harness.start_result("shadow", "bench_shadow.py", None)
    model = args.model.resolve()
    rgb = args.rgb or model / "sample" / SAMPLE[0]
    xyz = args.xyz or model / "sample" / SAMPLE[1]
    payload = build_payload(rgb.read_bytes(), xyz.read_bytes(), (0, 0))
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        root = Path(tmp)
        candidate = root / "candidate" / model.name
        shutil.copytree(model, candidate, ignore=shutil.ignore_patterns("sample", "history"))
        common = {"audit": "on", "archive": "none", "log_level": "WARNING"}
        with (
            running_service(
                model.parent, model.name, {**common, "data_dir": str(root / "off")}, root / "off.log", own_session=True
            ) as off,
            running_service(
                model.parent,
                model.name,
                {**common, "data_dir": str(root / "on"), "shadow": f'{{"{model.name}": "{candidate}"}}'},
                root / "on.log",
                own_session=True,
            ) as on,
        ):
            block(off, payload, args.warmup)
            block(on, payload, args.warmup)
            sent_on = args.warmup
            drained(on, sent_on)
            times: dict[str, list[float]] = {"off": [], "on": []}
            paired: list[float] = []
            for r in range(args.rounds):
                medians = {}
                for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    service = on if name == "on" else off
                    t = block(service, payload, args.block)
                    times[name].extend(t)
                    medians[name] = float(np.median(t))
                    if name == "on":
                        sent_on += args.block
                        drained(on, sent_on)
                paired.append(medians["on"] - medians["off"])
                print(f"round {r + 1}: off {medians['off']:.1f} ms, on {medians['on']:.1f} ms", flush=True)
            skipped = on.metric_sum("bridgenet_shadow_skipped_total") or 0.0
    result.update(
        {
            "model": str(args.model),
            "rounds": args.rounds,
            "block": args.block,
            "off": summary(times["off"]),
            "on": summary(times["on"]),
            "paired_median_difference_ms": float(np.median(paired)),
            "paired_differences_ms": paired,
            "shadow_skipped": skipped,
        }
    )
    print()
    harness.print_table(
        ["shadow", "median ms", "p99 ms", "n"],
        [[k, result[k]["median_ms"], result[k]["p99_ms"], result[k]["n"]] for k in ("off", "on")],
    )
    print(f"paired difference of the round medians (on − off): {result['paired_median_difference_ms']:.1f} ms")
    print(f"parts the shadow skipped (queue full): {skipped:.0f}")
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
