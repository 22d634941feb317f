"""Shared benchmark plumbing: machine facts, statistics, a real `python -m service` subprocess, HTTP load.

No torch here: the throughput benchmark and the GPU check's HTTP part run where only the service stack is
installed. Scripts in this folder import it as `harness` (the folder is on sys.path when a script runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
ENV_PREFIX = "BRIDGENET_"

log = logging.getLogger("benchmarks")


# ---- machine and statistics ------------------------------------------------------------------------


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What ran the numbers. Versions are read from package metadata, so torch is not imported here."""
    load1, load5, load15 = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_start": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _package_version("onnxruntime-gpu", "onnxruntime"),
        "onnxruntime_package": "onnxruntime-gpu" if _package_version("onnxruntime-gpu") else "onnxruntime",
        "torch": _package_version("torch"),
    }


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 30.0) -> dict[str, float]:
    """Wait until the 1-minute load average is at most `max_load`, for up to `max_wait_s`; then go anyway.

    The machine is shared with training jobs: numbers taken under load are slower and noisier, so the
    final measurements wait for a quiet spell and record the load they ran under either way.
    """
    start = time.monotonic()
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() - start < max_wait_s:
        log.info("1-min load %.2f > %.2f: waiting (%.0f s so far)", load, max_load, time.monotonic() - start)
        time.sleep(min(poll_s, max(0.0, max_wait_s - (time.monotonic() - start))))
        load = os.getloadavg()[0]
    return {"waited_s": round(time.monotonic() - start, 1), "load_1min_after_wait": round(load, 2)}


def stats(times_ms: list[float]) -> dict[str, float]:
    """Median, p95, mean, min and count of a list of durations in ms."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
        "n": len(times_ms),
    }


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 2,
    gap_s: float = 0.02,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each function `repeats` times in rounds (each function once per round, in an order shuffled
    per round with a fixed seed), after `warmup` calls each.

    Rounds rather than one block per function: on a shared machine the background load drifts, and
    interleaving spreads that drift evenly over the variants, so their ratios stay meaningful. Shuffled so
    that no variant always follows the same neighbour (e.g. an HTTP request whose server is still winding
    down). `gap_s` of idle time before each call: ONNX Runtime's and OpenMP's pool threads busy-wait for a
    while after a run, and without a gap one variant's spinning threads would slow down the next one.
    `clock`: wall time by default; `time.thread_time` measures the calling thread's CPU time instead.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    rng = random.Random(0)
    names = list(fns)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            fn = fns[name]
            time.sleep(gap_s)
            start = clock()
            fn()
            times[name].append((clock() - start) * 1e3)
    return times


def portable_paths(value: Any) -> Any:
    """`value` with every absolute path string made machine-neutral: inside the checkout relative to it,
    under the temporary directory as `$TMPDIR/...`. Results are committed; the machine's layout is not."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable_paths(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        for root, shown in ((REPO, None), (Path(tempfile.gettempdir()), "$TMPDIR")):
            if path.is_relative_to(root):
                relative = path.relative_to(root).as_posix()
                return relative if shown is None else f"{shown}/{relative}"
    return value


def setup_logging() -> None:
    """INFO to stderr with timestamps; the HTTP client's per-request lines and backbone notes kept out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "training.model.backbones"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(portable_paths(result), indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


def command_line(script: str) -> str:
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def start_result(benchmark: str, script: str, wait_quiet: float | None) -> dict[str, Any]:
    """Quiet WARNING logging, the optional wait for a quiet machine, and the head of the result: what ran,
    how it was invoked, on which machine, after which wait."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = wait_for_quiet(wait_quiet, 900) if wait_quiet else None
    return {"benchmark": benchmark, "command": command_line(script), "machine": machine(), "quiet_wait": quiet}


# ---- models and tables -----------------------------------------------------------------------------------

OPT_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """`model_dir/manifest.json` as a dict (the service verifies it properly when it loads the model)."""
    path = model_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --model-dir must hold model.onnx + manifest.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def ort_session(
    path: Path,
    *,
    threads: int | None = None,
    level: str = "all",
    spinning: bool = True,
    providers: list[Any] | None = None,
    profile_prefix: str | None = None,
) -> Any:
    """An ONNX Runtime session from the engine's factory (`service.engine.create_session`: all graph
    optimisations, CPU provider), with what a benchmark varies on top.

    `threads`: intra-op threads (None: ONNX Runtime's default, one per physical core); `spinning`: whether
    idle pool threads busy-wait for the next op (ONNX Runtime's default) or sleep; `level`: the graph
    optimisation level; `profile_prefix`: write ONNX Runtime's profile there.
    """
    import onnxruntime as ort

    from service.engine import create_session

    def configure(options: Any) -> None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix

    return create_session(
        str(path), providers=providers, intra_op_threads=threads, spin_wait=spinning, configure=configure
    )


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table: first column left-aligned, the rest right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def add_common_arguments(p: argparse.ArgumentParser, results: Path) -> None:
    """The options every service benchmark shares: export cache, quiet-machine wait, smoke mode, output."""
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "bridgenet-bench")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="LOAD",
        help="first wait (≤ 15 min) until the 1-min load average is at most LOAD",
    )
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    p.add_argument("--out", type=Path, default=results)
