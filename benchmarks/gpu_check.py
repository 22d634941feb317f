"""GPU check: does the CUDA provider really run, do CUDA and CPU agree, and how fast are the GPU paths?

Run from the repository root on a machine with an NVIDIA GPU (installs nothing):
    python benchmarks/gpu_check.py [--model-dir models/demo] [--budget-s 300]
Prints what it found and a table, writes benchmarks/results/gpu_check.json. Steps run in priority order
(demo checks, demo timings, demo over HTTP, the workers sweep, then WideResNet-50-2 at 288 and 576 px) and a
step that would
not fit in what is left of --budget-s is skipped and listed. Exit status: 0 every check passed; 1 a check
failed (CUDA fell back to the CPU, outputs disagree, the service did not run on CUDA); 2 partial (this
onnxruntime has no CUDA provider: PyTorch CUDA timed only); 3 no GPU here (nothing timed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_preprocessing import synthetic_part
from gpu_env import (
    CPU,
    CPU_DRY_RUN,
    CUDA,
    CUDA_TARGET,
    Budget,
    Target,
    gpu_memory_used_mb,
    package_version,
    probe,
    profile_providers,
)

from service.preprocessing import PreprocessConfig, preprocess_part

log = logging.getLogger("gpu_check")
RESULTS = harness.RESULTS_DIR / "gpu_check.json"
TOLERANCE = 1e-3
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL, EXIT_NO_GPU = 0, 1, 2, 3


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return harness.stats(times)


def model_inputs(manifest: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    """(batch, 3, S, S) float32 inputs from preprocessed synthetic parts (different seeds)."""
    config = PreprocessConfig.from_dict(manifest["preprocessing"])
    size = int(manifest["image_size"])
    parts = [preprocess_part(*synthetic_part(size, seed=i)[:2], config) for i in range(batch)]
    return {"rgb": np.stack([p.rgb for p in parts]), "depth": np.stack([p.depth for p in parts])}


def check_ort(name: str, model_dir: Path, args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    """CUDA session: provider, profile evidence, GPU memory, parity with the CPU; then timings. Failures."""
    failures: list[str] = []
    manifest = harness.read_manifest(model_dir)
    onnx_path = model_dir / "model.onnx"
    inputs = model_inputs(manifest, 2)
    one = {k: v[:1] for k, v in inputs.items()}
    mem_before = gpu_memory_used_mb()
    prefix = str(args.cache_dir / f"ort-profile-{name}")
    target: Target = args.target
    session = harness.ort_session(onnx_path, providers=target.ort_providers, profile_prefix=prefix)
    out["session_providers"] = session.get_providers()
    if out["session_providers"][0] != target.provider:
        ran_on = out["session_providers"][0]
        failures.append(f"{name}: the session runs on {ran_on}, not {target.provider} (silent fallback)")
        return failures
    cuda_out = session.run(["scores", "maps"], inputs)
    for _ in range(2):
        session.run(["scores", "maps"], one)
    out["profile"] = profile_providers(session.end_profiling())
    mem_after = gpu_memory_used_mb()
    out["gpu_memory_used_mb"] = {"before_session": mem_before, "after_runs": mem_after}
    if target.provider == CUDA and out["profile"]["conv_by_provider"].get(CPU):
        failures.append(f"{name}: {out['profile']['conv_by_provider'][CPU]} Conv nodes ran on the CPU provider")
    if not out["profile"]["nodes_by_provider"].get(target.provider):
        failures.append(f"{name}: the profile shows no node on {target.provider}")
    cpu_session = harness.ort_session(onnx_path)
    cpu_out = cpu_session.run(["scores", "maps"], inputs)
    diff = {k: float(np.abs(a - b).max()) for k, a, b in zip(("scores", "maps"), cuda_out, cpu_out, strict=True)}
    out["max_abs_diff_cuda_vs_cpu"] = diff
    if max(diff.values()) > TOLERANCE:
        # TF32 convolutions (on by default on Ampere and later) are the usual cause; say whether they are.
        strict = harness.ort_session(onnx_path, providers=[(CUDA, {"use_tf32": "0"}), CPU])
        out["max_abs_diff_without_tf32"] = {
            k: float(np.abs(a - b).max())
            for k, a, b in zip(("scores", "maps"), strict.run(["scores", "maps"], inputs), cpu_out, strict=True)
        }
        failures.append(f"{name}: CUDA vs CPU max |diff| {diff} > {TOLERANCE}")
    batch8 = {k: np.concatenate([v] * 4) for k, v in inputs.items()}
    out["ort_cuda_b1"] = timed(lambda: session.run(["scores", "maps"], one), args.repeats)
    out["ort_cuda_b8"] = timed(lambda: session.run(["scores", "maps"], batch8), args.repeats)
    out["ort_cuda_b8"]["per_part_median_ms"] = round(out["ort_cuda_b8"]["median_ms"] / 8, 3)
    if args.cpu_reference and target.provider == CUDA:
        out["ort_cpu_b1"] = timed(lambda: cpu_session.run(["scores", "maps"], one), max(3, args.repeats // 5), 1)
    failures += time_precisions(name, onnx_path, manifest, args, out)
    return failures


def time_precisions(
    name: str, onnx_path: Path, manifest: dict[str, Any], args: argparse.Namespace, out: dict[str, Any]
) -> list[str]:
    """fp32 and fp16 (made here with the exporter's converter) through the engine's IO binding, batches
    1/8/32: parts/s and GPU memory per precision, and fp16's largest score difference from fp32."""
    from service.engine.binding import BoundRunner

    try:  # the fp16 converter needs the `onnx` package (the training extra), not installed for serving only
        from training.export.precision import TOLERANCES, convert_fp16
    except ImportError as exc:
        out["precisions_io_binding"] = f"skipped: {exc}"
        return []

    target: Target = args.target
    fp16_path = args.cache_dir / f"{name}-fp16.onnx"
    if not fp16_path.is_file():
        convert_fp16(onnx_path, fp16_path)
    device = "cuda" if target.provider == CUDA else "cpu"
    size = int(manifest["image_size"])
    base = model_inputs(manifest, 2)
    rows: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for precision, path in (("fp32", onnx_path), ("fp16", fp16_path)):
        session = harness.ort_session(path, providers=target.ort_providers)
        runner = BoundRunner(session, size, device)
        scores[precision] = runner.run(base["rgb"], base["depth"])[0]
        rows[precision] = {}
        for batch in args.batches:
            feed = {k: np.concatenate([v] * (batch // 2 + 1))[:batch] for k, v in base.items()}
            runner.run(feed["rgb"], feed["depth"])  # the first run at a shape allocates
            t = timed(partial(runner.run, feed["rgb"], feed["depth"]), args.repeats)
            t["parts_per_s"] = round(1e3 * batch / t["median_ms"], 1)
            rows[precision][f"b{batch}"] = t
        rows[precision]["gpu_memory_used_mb"] = gpu_memory_used_mb()
        del runner, session  # free this precision's GPU memory before the next one is measured
    diff = float(np.abs(scores["fp32"] - scores["fp16"]).max())
    out["precisions_io_binding"] = rows | {"fp16_score_max_abs_diff": diff, "device": device}
    bound = TOLERANCES["fp16"].score
    return [f"{name}: fp16 scores differ from fp32 by {diff:.4g} > {bound}"] if diff > bound else []


def time_torch_cuda(model_dir: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch
    from torch_models import torch_model_for

    net, source = torch_model_for(model_dir, None)
    if net is None:
        out["torch_cuda"] = f"skipped: {source}"
        return
    device = args.target.torch_device
    net = net.to(device).eval()
    inputs = model_inputs(harness.read_manifest(model_dir), 1)
    rgb, depth = (torch.from_numpy(inputs[k]).to(device) for k in ("rgb", "depth"))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run() -> None:
        with torch.inference_mode():
            net(rgb, depth)
        if device == "cuda":  # kernels run asynchronously: wait for them, or only the launch is timed
            torch.cuda.synchronize()

    out["torch_cuda_b1"] = {**timed(run, args.repeats), "source": source, "device": device}
    if device == "cuda":
        out["torch_cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.empty_cache()


def check_http(name: str, model_dir: Path, args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    """The real service on CUDA (require_cuda: it refuses to start otherwise), batching off and on."""
    manifest = harness.read_manifest(model_dir)
    size = int(manifest["image_size"])
    rgb, xyz = synthetic_part(size)[:2]
    payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (size, size))
    common = {**args.target.service, "max_queue": 64, "request_timeout_s": 120}
    modes = {
        "batching_off": {**common, "batch_max_size": 1, "max_inflight": 2},
        "batching_on": {**common, "batch_max_size": 8, "batch_wait_ms": 2, "max_inflight": 8},
    }
    failures: list[str] = []
    out["http"] = {}
    with ExitStack() as stack:
        services = {
            mode: stack.enter_context(
                service_load.running_service(
                    model_dir.parent, model_dir.name, s, args.cache_dir / "logs" / f"gpu-{name}-{mode}.log", 300
                )
            )
            for mode, s in modes.items()
        }
        for clients in args.clients:
            for mode, svc in services.items():
                rnd = service_load.closed_loop(svc.url, payload, clients, args.http_seconds, 0.5)
                level = service_load.summarise_rounds([rnd])
                out["http"].setdefault(mode, []).append(level)
                if level.get("provider") not in (None, args.target.provider):
                    failures.append(f"{name} {mode}: the service answered with provider {level['provider']}")
    return failures


def sweep_workers(name: str, model_dir: Path, args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    """Parts/s of the service with 1, 2, 4, 8 worker processes (BRIDGENET_WORKERS) × batch sizes, each
    cell a service of its own loaded with enough clients to fill every worker's batches. Beside each
    measured rate: the service's CPU per part in that cell (all its processes, from /metrics) and the rate
    that CPU alone would allow on this host's cores, so a cell far below its projection is limited by the
    GPU (or the session), one near it by the CPU around the session. GPU memory per worker from nvidia-smi."""
    manifest = harness.read_manifest(model_dir)
    size = int(manifest["image_size"])
    rgb, xyz = synthetic_part(size)[:2]
    payload = service_load.build_payload(*service_load.encode_part(rgb, xyz), (size, size))
    cores = os.cpu_count() or 1
    failures: list[str] = []
    cells: list[dict[str, Any]] = []
    out["workers_sweep"] = {"cores": cores, "cells": cells}
    for workers in args.workers:
        for batch in args.sweep_batches:
            if not args.budget.allow(f"{name}: workers sweep {workers}×b{batch}", 10 + 3 * workers + args.http_seconds):
                continue
            inflight = max(2, batch)
            settings = {
                **args.target.service,
                "workers": workers,
                "batch_max_size": batch,
                "batch_wait_ms": 2,
                "max_inflight": inflight,
                "max_queue": 64,
                "request_timeout_s": 120,
            }
            clients = workers * inflight
            memory_before = gpu_memory_used_mb()
            log_path = args.cache_dir / "logs" / f"gpu-{name}-w{workers}-b{batch}.log"
            with service_load.running_service(model_dir.parent, model_dir.name, settings, log_path, 300) as svc:
                memory_loaded = gpu_memory_used_mb()
                service_load.closed_loop(svc.url, payload, clients, 0.5, 0.0)  # every worker warm
                cpu_before = svc.metric_sum("process_cpu_seconds_total") or 0.0
                level = service_load.summarise_rounds(
                    [service_load.closed_loop(svc.url, payload, clients, args.http_seconds, 0.0)]
                )
                cpu_s = (svc.metric_sum("process_cpu_seconds_total") or 0.0) - cpu_before
            answered = max(1, level["answered"])
            cpu_ms = 1e3 * cpu_s / answered
            cell: dict[str, Any] = {
                "workers": workers,
                "batch_max_size": batch,
                "clients": clients,
                "parts_per_s": level["throughput_parts_per_s"],
                "latency": level.get("latency"),
                "refused": level["refused"],
                "cpu_ms_per_part": round(cpu_ms, 3),
                # What the CPU side alone allows: at most `cores` processes' worth of CPU time per second.
                "cpu_bound_parts_per_s": round(min(workers, cores) * 1e3 / cpu_ms, 1) if cpu_ms > 0 else None,
                "gpu_memory_mb_per_worker": None
                if memory_before is None or memory_loaded is None
                else round((memory_loaded - memory_before) / workers, 1),
            }
            cells.append(cell)
            if level.get("provider") not in (None, args.target.provider):
                failures.append(f"{name} workers={workers}: the service answered with provider {level['provider']}")
    return failures


def demo_dir(args: argparse.Namespace, env: dict[str, Any]) -> Path | None:
    """models/demo if present; else a demo-shaped random-weight export (lite0, 256 px, width 256)."""
    if (args.model_dir / "model.onnx").is_file():
        return args.model_dir
    if env["torch"] is None:
        return None
    from torch_models import cached_model_dir

    log.warning("%s not found: timing a random-weight EfficientNet-Lite0 model of the demo's shape", args.model_dir)
    return cached_model_dir(args.cache_dir, "tf_efficientnet_lite0", 256)


def run_checks(args: argparse.Namespace, env: dict[str, Any], budget: Budget) -> tuple[list[dict[str, Any]], list[str]]:
    failures: list[str] = []
    models: list[dict[str, Any]] = []
    ort_ok, torch_ok = env["ort_cuda_ep"], bool(env["torch_cuda"])
    http_ok = ort_ok and env["service_stack"]
    targets: list[tuple[str, Callable[[], Path | None], float]] = [("demo", partial(demo_dir, args, env), 60)]
    for size in args.wrn_sizes:
        targets.append((f"wrn50-2-{size}", partial(_wrn_dir, args, env, size), 40 if size <= 288 else 70))
    for name, make_dir, need in targets:
        entry: dict[str, Any] = {"model": name}
        models.append(entry)
        if not budget.allow(f"{name}: build/export + checks", need):
            continue
        steps: list[tuple[str, Callable[[Path], list[str] | None], float, bool]] = [
            ("onnxruntime CUDA checks + timings", partial(check_ort, name, args=args, out=entry), need / 2, ort_ok),
            ("torch CUDA timings", partial(time_torch_cuda, args=args, out=entry), 20, torch_ok),
            ("HTTP service on CUDA", partial(check_http, name, args=args, out=entry), 60, http_ok),
            ("workers sweep on CUDA", partial(sweep_workers, name, args=args, out=entry), 60, http_ok),
        ]
        try:
            model_dir = make_dir()
        except Exception as exc:  # a check script reports every failure and carries on
            log.exception("%s: cannot build the model", name)
            entry["error"] = f"model: {exc}"
            failures.append(f"{name}: could not build the model: {exc}")
            continue
        if model_dir is None:
            entry["skipped"] = "no model folder and no torch to export one"
            continue
        entry["model_dir"] = str(model_dir)
        for step, fn, step_need, possible in steps:
            if not possible:
                entry.setdefault("not_run", []).append(step)
                continue
            if not budget.allow(f"{name}: {step}", step_need):
                continue
            try:
                failures.extend(fn(model_dir) or [])
            except Exception as exc:
                log.exception("%s: %s failed", name, step)
                entry.setdefault("errors", {})[step] = str(exc)[-2000:]
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                failures.append(f"{name}: {step} failed: {first_line}")
    return models, failures


def _wrn_dir(args: argparse.Namespace, env: dict[str, Any], size: int) -> Path | None:
    if env["torch"] is None:
        return None
    from torch_models import cached_model_dir

    return cached_model_dir(args.cache_dir, "wide_resnet50_2", size)


def print_report(result: dict[str, Any]) -> None:
    rows = []
    for m in result["models"]:
        for key in ("ort_cuda_b1", "ort_cuda_b8", "ort_cpu_b1", "torch_cuda_b1"):
            if isinstance(m.get(key), dict):
                rows.append([f"{m['model']} {key}", m[key]["median_ms"], m[key]["p95_ms"]])
        for mode, levels in m.get("http", {}).items():
            for lv in levels:
                lat = lv.get("latency", {})
                rows.append(
                    [
                        f"{m['model']} http {mode} ×{lv['clients']}",
                        lat.get("median_ms"),
                        lat.get("p95_ms"),
                        lv["throughput_parts_per_s"],
                    ]
                )
    if rows:
        harness.print_table(["path", "median ms", "p95 ms", "parts/s"], [r + [None] * (4 - len(r)) for r in rows])
    for m in result["models"]:
        if "max_abs_diff_cuda_vs_cpu" in m:
            print(
                f"{m['model']}: providers {m['session_providers']}, CUDA vs CPU max |diff| "
                f"{m['max_abs_diff_cuda_vs_cpu']}, nodes by provider {m['profile']['nodes_by_provider']}"
            )
    for m in result["models"]:
        if isinstance(m.get("precisions_io_binding"), dict):
            p = m["precisions_io_binding"]
            print(
                f"\n{m['model']}: IO binding on {p['device']}, fp16 max |score diff| {p['fp16_score_max_abs_diff']:.3g}"
            )
            batches = [key for key in p["fp32"] if key.startswith("b")]
            harness.print_table(
                ["precision", *(f"{b} parts/s" for b in batches), "GPU MB used"],
                [[k, *(p[k][b]["parts_per_s"] for b in batches), p[k]["gpu_memory_used_mb"]] for k in ("fp32", "fp16")],
            )
    for m in result["models"]:
        sweep = m.get("workers_sweep")
        if isinstance(sweep, dict) and sweep["cells"]:
            print(f"\n{m['model']}: workers sweep ({sweep['cores']} cores); CPU-bound: what the CPU per part allows")
            harness.print_table(
                ["workers × batch", "parts/s", "CPU-bound parts/s", "CPU ms/part", "p95 ms", "GPU MB/worker"],
                [
                    [
                        f"{c['workers']} × {c['batch_max_size']}",
                        c["parts_per_s"],
                        c["cpu_bound_parts_per_s"],
                        c["cpu_ms_per_part"],
                        (c["latency"] or {}).get("p95_ms"),
                        c["gpu_memory_mb_per_worker"],
                    ]
                    for c in sweep["cells"]
                ],
            )
    for line in result["skipped"]:
        print(f"skipped: {line}")
    print(f"STATUS: {result['status']}" + "".join(f"\n  - {f}" for f in result["failures"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"))
    p.add_argument("--wrn-sizes", type=int, nargs="*", default=[288, 576])
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new steps after this")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the fp32/fp16 timings")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--http-seconds", type=float, default=2.0, help="measured seconds per HTTP cell")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="worker processes of the sweep")
    p.add_argument("--sweep-batches", type=int, nargs="+", default=[1, 16], help="batch sizes of the workers sweep")
    p.add_argument("--no-cpu-reference", dest="cpu_reference", action="store_false")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "bridgenet-bench")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch (and so WRN, which is exported here)")
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every step on the CPU instead of CUDA "
        "(tests this script on a machine without a GPU; its numbers say nothing about GPUs)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.target = CPU_DRY_RUN if args.cpu_dry_run else CUDA_TARGET
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    budget = Budget(args.budget_s)
    args.budget = budget  # the workers sweep checks it per cell
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    env = probe()
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "command": harness.command_line("gpu_check.py"),
        "machine": harness.machine(),
        "environment": env,
        "models": [],
        "skipped": budget.skipped,
        "failures": [],
    }
    print(json.dumps(env, indent=2))
    if args.cpu_dry_run:
        print("CPU DRY RUN: every step runs on the CPU; this tests the script, not a GPU.")
        result["dry_run"] = True
        env["ort_cuda_ep"] = env["onnxruntime"] is not None  # stands for "the target provider exists"
        env["torch"] = package_version("torch")
        env["torch_cuda"] = env["torch"] is not None
    elif not env["gpu_present"]:
        result["status"] = "no_gpu"
        result["message"] = (
            "NO GPU: no NVIDIA driver (libcuda.so.1 does not load) and no nvidia-smi on this "
            "machine; nothing was timed. Run this script on a machine with an NVIDIA GPU."
        )
        print(result["message"])
        harness.write_result(result, args.out)
        return EXIT_NO_GPU
    if not env["ort_cuda_ep"]:
        print(
            f"onnxruntime {env['onnxruntime']} has no CUDAExecutionProvider (providers "
            f"{env['ort_available_providers']}): the plain CPU build? Timing PyTorch CUDA only."
        )
    if not env["torch_cuda"]:
        print("PyTorch CUDA is not usable here (torch missing or torch.cuda.is_available() is False).")
    if args.no_torch:
        env["torch"] = env["torch_cuda"] = None
    result["models"], result["failures"] = run_checks(args, env, budget)
    if result["failures"]:
        result["status"] = "failed"
    elif not env["ort_cuda_ep"]:
        result["status"] = "partial: no CUDA provider in onnxruntime"
    else:
        result["status"] = "ok" if not budget.skipped else "ok (some steps skipped for the budget)"
    if args.cpu_dry_run:
        result["status"] = f"cpu dry run: {result['status']}"
    result["seconds"] = round(args.budget_s - budget.left(), 1)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(result)
    harness.write_result(result, args.out)
    if result["failures"]:
        return EXIT_FAILED
    return EXIT_PARTIAL if not env["ort_cuda_ep"] else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
