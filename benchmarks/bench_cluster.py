"""Ray Serve's cost and gain: latency added per request against `python -m service` direct, and parts/s with
1 vs N replicas, on the same machine.

Run from the repository root (needs the `cluster` extra):
    python benchmarks/bench_cluster.py --model-dir models/demo [--replicas 1 2] [--wait-quiet 1.5]
Prints a table and writes benchmarks/results/cluster.json.

Latency: `python -m service` and `python -m service.cluster --replicas 1` (a local Ray instance) run side by
side on loopback with the same settings, each in a session of its own (Linux's autogroup scheduler gives
each session its share of the CPU: the Ray instance must start in its own session to be stopped as a
whole, so the direct service does too); rounds alternate between them at each client level, every client
posting the same pre-built part back to back (closed loop). The added latency is the difference of the
medians; "outside the app" is the client's latency minus the app's own total per answer, the part of the
difference that is Ray's hop rather than how fast each engine got the CPU. Throughput: parts/s at the
highest client level with 1 replica (that run) and with each further replica count on its own local Ray
instance in turn (each replica reserves --cpus-per-replica of its CPUs).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_preprocessing import synthetic_part

RESULTS = harness.RESULTS_DIR / "cluster.json"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


@contextmanager
def running_cluster(
    model_dir: Path, settings: Mapping[str, str | int | float], replicas: int, args: argparse.Namespace, log: Path
) -> Iterator[service_load.Service]:
    """`python -m service.cluster` with its own local Ray instance, ready; stopped with SIGTERM (which
    shuts Serve and the instance down), SIGKILL after STOP_TIMEOUT_S."""
    port = service_load.free_port()
    values = {
        "models_dir": str(model_dir.parent.resolve()),
        "models": model_dir.name,
        "default_model": model_dir.name,
        "log_level": "WARNING",
    }
    values.update({k: str(v) for k, v in settings.items()})
    env = service_load.service_env(values)
    env.pop("RAY_ADDRESS", None)  # always a fresh local instance
    # Loopback only: no token authentication (Ray would otherwise create one in ~/.ray on every run).
    env.setdefault("RAY_AUTH_MODE", "disabled")
    command = [
        sys.executable, "-m", "service.cluster", "--replicas", str(replicas),
        "--cpus-per-replica", str(args.cpus_per_replica), "--port", str(port),
    ]  # fmt: skip
    if args.num_cpus:
        command += ["--num-cpus", str(args.num_cpus)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=harness.REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = service_load.Service(f"http://127.0.0.1:{port}", process, log, values)
    try:
        service_load.wait_until_ready(service, READY_TIMEOUT_S, poll_s=0.5)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the instance's processes with it
                process.wait()


def outside_app(rounds: list[service_load.LoadRound]) -> dict[str, float]:
    """Per answer, the client's latency minus the app's own `total` (its timings_ms): the HTTP path and,
    on Ray, the proxy hop. It does not depend on how fast the engine got the CPU, which on a shared machine
    can differ between the two systems by far more than the hop costs."""
    return harness.stats(
        [r.latency_ms - r.server_ms["total"] for rnd in rounds for r in rnd.results if r.status == 200]
    )


def level_row(name: str, level: dict[str, Any]) -> list[Any]:
    lat = level.get("latency", {})
    return [name, level["clients"], level["throughput_parts_per_s"], lat.get("median_ms"), lat.get("p95_ms"),
            sum(level["refused"].values())]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"), help="exported model folder")
    p.add_argument("--clients", type=int, nargs="+", default=None, help="concurrent clients (default 1 4)")
    p.add_argument("--replicas", type=int, nargs="+", default=None, help="replica counts compared (default 1 2)")
    p.add_argument("--cpus-per-replica", type=float, default=0.5, help="CPUs each replica reserves in Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per round (default 6)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per system and level (default 3; quick 1)")
    p.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds first (default 2)")
    p.add_argument("--part-size", default="native", help="uploaded part side, or 'native' for the model's S")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per engine (default: ORT's)")
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    args.clients = args.clients or ([1] if args.quick else [1, 4])
    args.replicas = args.replicas or [1, 2]
    args.duration_s = args.duration_s or (0.5 if args.quick else 6.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (0.2 if args.quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet = harness.wait_for_quiet(args.wait_quiet, 900) if args.wait_quiet else None
    manifest = harness.read_manifest(args.model_dir)
    side = int(manifest["image_size"]) if args.part_size == "native" else int(args.part_size)
    rgb, xyz = synthetic_part(side)[:2]
    payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (side, side))
    # Queue and timeout large enough that the clients are measured, not refused. The audit trail off in both
    # systems: several replicas refuse SQLite (they need the shared PostgreSQL), and this measures serving.
    settings: dict[str, str | int | float] = {
        "providers": "cpu",
        "max_queue": 32,
        "request_timeout_s": 60.0,
        "audit": "off",
    }
    if args.threads:
        settings["intra_op_threads"] = args.threads
    logs = args.cache_dir / "logs"
    result: dict[str, Any] = {
        "benchmark": "cluster",
        "command": harness.command_line("bench_cluster.py"),
        "machine": harness.machine(),
        "quiet_wait": quiet,
        "model": {"dir": str(args.model_dir), "backbone": manifest["backbone"], "image_size": manifest["image_size"]},
        "part_hw": [side, side],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "service_settings": settings,
    }

    # 1. Latency, side by side: direct vs one Ray Serve replica, rounds alternating.
    latency: dict[str, list[dict[str, Any]]] = {"direct": [], "ray_serve": []}
    with ExitStack() as stack:
        systems = {
            "direct": stack.enter_context(
                service_load.running_service(
                    args.model_dir.parent, args.model_dir.name, settings, logs / "direct.log", own_session=True
                )
            ),
            "ray_serve": stack.enter_context(running_cluster(args.model_dir, settings, 1, args, logs / "ray-1.log")),
        }
        for clients in args.clients:
            rounds: dict[str, list[service_load.LoadRound]] = {name: [] for name in systems}
            for _ in range(args.rounds):
                for name, svc in systems.items():
                    rounds[name].append(
                        service_load.closed_loop(svc.url, payload, clients, args.duration_s, args.warmup_s)
                    )
            for name in systems:
                level = service_load.summarise_rounds(rounds[name])
                level["outside_app"] = outside_app(rounds[name])
                latency[name].append(level)
                logging.info("%s, %d clients: %s ms median", name, clients, latency[name][-1].get("latency"))
    result["latency"] = latency
    result["added_outside_app_median_ms"] = {
        str(d["clients"]): round(r["outside_app"]["median_ms"] - d["outside_app"]["median_ms"], 3)
        for d, r in zip(latency["direct"], latency["ray_serve"], strict=True)
    }
    result["added_median_ms"] = {
        str(d["clients"]): round(r["latency"]["median_ms"] - d["latency"]["median_ms"], 3)
        for d, r in zip(latency["direct"], latency["ray_serve"], strict=True)
        if "latency" in d and "latency" in r
    }

    # 2. Throughput by replica count at the highest client level, one Ray instance at a time; the single
    # replica's is the latency run's own at that level.
    clients = max(args.clients)
    throughput: list[dict[str, Any]] = []
    for replicas in args.replicas:
        if replicas == 1:
            throughput.append({"replicas": 1, **latency["ray_serve"][args.clients.index(clients)]})
            continue
        with running_cluster(args.model_dir, settings, replicas, args, logs / f"ray-{replicas}.log") as svc:
            rounds_r = [service_load.closed_loop(svc.url, payload, clients, args.duration_s, args.warmup_s)
                        for _ in range(args.rounds)]  # fmt: skip
        throughput.append({"replicas": replicas, **service_load.summarise_rounds(rounds_r)})
        logging.info(
            "%d replicas, %d clients: %.1f parts/s", replicas, clients, throughput[-1]["throughput_parts_per_s"]
        )
    result["throughput_by_replicas"] = throughput
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    print(
        f"\n{args.model_dir} ({manifest['backbone']}, S={manifest['image_size']}), {side}×{side} parts, "
        f"{args.rounds} × {args.duration_s:g} s per level, {os.cpu_count()} CPUs, "
        f"load at start {result['machine']['load_average_start']}, at end {result['load_average_end']}"
    )
    rows = [
        [*level_row(name, level), level["outside_app"]["median_ms"], level["server_median_ms"]["inference"]]
        for name, levels in latency.items()
        for level in levels
    ]
    harness.print_table(
        ["system", "clients", "parts/s", "p50 ms", "p95 ms", "refused", "outside app p50 ms", "inference p50 ms"], rows
    )
    print(f"Ray Serve's added median latency (ms) by clients: {result['added_median_ms']}")
    print(f"... of it outside the app (HTTP + proxy hop): {result['added_outside_app_median_ms']}")
    harness.print_table(
        ["replicas", "clients", "parts/s", "p50 ms", "p95 ms", "refused"],
        [[t["replicas"], *level_row("", t)[1:]] for t in throughput],
    )
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
