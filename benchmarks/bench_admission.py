"""Cost of admission before the body (service.api.gate.AdmissionGate) per request, side by side.

Run from the repository root:

    python benchmarks/bench_admission.py            # 2000 calls per variant, interleaved
    python benchmarks/bench_admission.py --quick    # smoke run

The same inner ASGI app (it answers 200 without reading the body) is called directly (`bare`) and behind
the gate of a real, started service state (demo model loaded, API key set, admission created in the
loop): `gate, admitted` takes the key check, readiness, Content-Length and an admission pass that is
released when the answer is sent; `gate, refused 401` is a wrong key, answered by the gate with the
service's error body. Each call is one `POST /v1/predict` scope with the headers a line controller sends.
The target: the gate adds at most 0.3 ms per admitted request. Prints a table and writes
benchmarks/results/admission.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from pydantic import SecretStr

from service.api.admission import Admission
from service.api.deps import ServiceState
from service.api.gate import AdmissionGate
from service.codecs import DecodeLimits
from service.config import Settings
from service.engine import Engine
from service.main import engine_options, max_body_bytes
from service.metrics import Metrics

RESULTS = harness.RESULTS_DIR / "admission.json"
KEY = "benchmark-key-0123456789"
TARGET_MS = 0.3


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def scope(key: str) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"x-api-key", key.encode()),
        (b"content-type", b"multipart/form-data; boundary=b0undary"),
        (b"content-length", b"2500000"),
        (b"user-agent", b"line-controller/1.0"),
    ]
    return {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers, "query_string": b""}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            models_dir=args.models_dir,
            default_model=args.model,
            providers="cpu",
            intra_op_threads=1,
            api_key=SecretStr(KEY),
            data_dir=Path(data_dir),
        )
        engine = Engine(engine_options(settings))
        engine.start()
        loop = asyncio.new_event_loop()
        try:
            state = ServiceState(settings=settings, engine=engine, metrics=Metrics(), limits=DecodeLimits())

            async def create() -> Admission:  # asyncio primitives belong to the loop that uses them
                return Admission(settings.max_inflight, settings.max_queue, settings.request_timeout_s)

            state.admission = loop.run_until_complete(create())
            gate = AdmissionGate(inner, state=state, max_body_bytes=max_body_bytes(settings))
            admitted, refused = scope(KEY), scope("wrong-key-0123456789abc")
            logging.getLogger("service.api.gate").setLevel(logging.WARNING)  # the refusals' INFO lines

            def batch(app: Any, s: dict[str, Any]) -> Any:
                async def calls() -> None:
                    for _ in range(args.per_call):
                        await app(dict(s), receive, send)

                return lambda: loop.run_until_complete(calls())

            variants = {
                "bare": batch(inner, admitted),
                "gate, admitted": batch(gate, admitted),
                "gate, refused 401": batch(gate, refused),
            }
            times = harness.interleaved(variants, repeats=args.repeats, warmup=5, gap_s=0.0)
            assert state.admission.admitted == 0, "a pass was not released"
        finally:
            loop.close()
            engine.stop()
    per_request = {name: [t / args.per_call for t in ts] for name, ts in times.items()}
    stats = {name: harness.stats(ts) for name, ts in per_request.items()}
    bare = stats["bare"]["median_ms"]
    for s in stats.values():
        s["added_median_ms"] = round(s["median_ms"] - bare, 4)
    added = stats["gate, admitted"]["added_median_ms"]
    return {
        "variants": stats,
        "requests_per_sample": args.per_call,
        "target_added_ms": TARGET_MS,
        "added_ms": added,
        "within_target": added <= TARGET_MS,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="demo")
    p.add_argument("--repeats", type=int, default=200, help="samples per variant")
    p.add_argument("--per-call", type=int, default=10, help="requests per sample (one event-loop entry)")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.per_call = 10, 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = harness.start_result("admission_gate", "bench_admission.py", args.wait_quiet)
    result.update(run(args))
    rows = [[name, s["median_ms"], s["p95_ms"], s["added_median_ms"], s["n"]] for name, s in result["variants"].items()]
    print(f"\nPOST /v1/predict scopes through the admission gate, {args.repeats} × {args.per_call} per variant")
    harness.print_table(["variant", "median ms", "p95 ms", "added (median) ms", "samples"], rows)
    verdict = "within" if result["within_target"] else "OVER"
    print(f"gate adds {result['added_ms']:.4f} ms per admitted request: {verdict} the {TARGET_MS} ms target")
    harness.write_result(result, args.out)
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
