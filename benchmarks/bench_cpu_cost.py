"""CPU cost per part of the serving path outside the ONNX Runtime session, split by stage.

Run from the repository root:
    python benchmarks/bench_cpu_cost.py [--model-dir models/demo] [--sizes 256 400 800] [--n 60] [--rounds 3]
Prints a table and writes benchmarks/results/cpu_cost.json.

Each model (the demo model, and a fake fast model with the same inputs, outputs and preprocessing that stands
in for a model on a GPU) is served by a real `python -m service` (one intra-op thread, no spinning, audit on).
The good sample part, resized to each size, is posted N times one after the other after a warm-up; the
service process's CPU time (user + system, all threads, from /proc/<pid>/stat) over those N parts, less the
answers' own `timings_ms.inference` ("outside"), or less the session run's CPU time measured in this process
on the same settings ("outside'": unlike the answers' wall time, it does not grow with other load), is the
CPU per part outside the session. `--baseline-tree` serves another checkout beside this one and pairs the two.
Process CPU time does not count other processes' work, so it mostly holds on a shared machine (caches and
cores are still shared); the client's CPU is not in it. Sizes are measured in rounds (each size once per
round) and the median over rounds is reported. Then py-spy (when installed) samples the process over
another N parts, and its samples are sorted into stages by the innermost service frame they are in.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from fake_graph import build_graph, write_fake_model

RESULTS = harness.RESULTS_DIR / "cpu_cost.json"
SAMPLE = harness.REPO / "models" / "demo" / "sample"
PARTS = {"good": ("good_rgb.png", "good_xyz.tiff"), "crack": ("rgb.png", "xyz.tiff")}
SETTINGS: dict[str, str | int | float] = {
    "intra_op_threads": 1,
    "ort_spin_wait": "false",
    "audit": "on",
    "providers": "cpu",
}
PROFILE_RATE_HZ = 250
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Stage of a sampled stack: the innermost frame whose "function (file" text contains one of these wins.
STAGE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("session", ("onnxruntime/", "service/engine/binding.py")),
    ("decode", ("service/codecs.py", "tifffile/")),
    ("preprocess", ("service/preprocessing/",)),
    ("postprocess", ("service/postprocessing/", "encode_anomaly_map")),
    ("audit record", ("service/records/", "sqlalchemy/", "sqlite3/")),
    ("push", ("service/push/",)),
    ("logging", ("logging/", "service/logs.py")),
    ("metrics", ("service/metrics.py", "prometheus_client/")),
    ("form parsing", ("service/api/forms.py", "python_multipart/", "multipart/")),
    ("response", ("fastapi/routing.py", "fastapi/encoders.py", "starlette/responses.py", "service/api/schemas.py")),
    ("admission + routes", ("service/api/",)),
    ("http + middleware", ("uvicorn/", "starlette/", "fastapi/", "h11/", "httptools/")),
    ("event loop + threads", ("asyncio/", "anyio/", "concurrent/", "threading.py", "uvloop/")),
)
OUTSIDE = "other"
# py-spy's idle test misses some blocked threads: a stack that ends in one of these is a wait, not CPU.
WAITS = ("Condition.wait (", "Queue.get (", "_worker (concurrent/futures/thread.py", "Event.wait (")
WAITING = "waiting (not CPU)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads (also ended ones), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat(5)


def resized_part(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo sample `name` at size×size: rgb (H, W, 3) uint8 (area/linear resize), xyz (H, W, 3) float32
    metres (nearest neighbour, so missing points stay missing and no point is invented)."""
    import cv2
    import tifffile

    rgb_file, xyz_file = PARTS[name]
    bgr = cv2.imread(str(SAMPLE / rgb_file), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{SAMPLE / rgb_file} could not be read")
    rgb: np.ndarray = np.ascontiguousarray(bgr[:, :, ::-1])
    xyz: np.ndarray = np.asarray(tifffile.imread(SAMPLE / xyz_file), dtype=np.float32)
    if rgb.shape[:2] != (size, size):
        shrink = size < rgb.shape[0]
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        xyz = cv2.resize(xyz, (size, size), interpolation=cv2.INTER_NEAREST)
    return rgb, xyz


def post_many(client: service_load.KeepAliveClient, payload: service_load.Payload, n: int) -> list[float]:
    """`n` sequential predictions; the answers' session times (ms). A refused prediction stops the run."""
    inference = []
    for _ in range(n):
        result = service_load.post_part(client, payload)
        if result.status != 200:
            raise RuntimeError(f"the service answered {result.status} to a prediction")
        inference.append(result.server_ms["inference"])
    return inference


def measure_block(service: service_load.Service, payload: service_load.Payload, n: int, warmup: int) -> dict[str, Any]:
    """Process CPU per part over `n` predictions after `warmup` ones, and how much of it the session was."""
    with service_load.KeepAliveClient(service.url) as client:
        post_many(client, payload, warmup)
        before = cpu_seconds(service.process.pid)
        inference = post_many(client, payload, n)
        after = cpu_seconds(service.process.pid)
    cpu_ms = (after - before) * 1e3 / n
    session_ms = float(np.mean(inference))
    return {"cpu_ms": cpu_ms, "session_ms": session_ms, "outside_ms": cpu_ms - session_ms}


def session_cpu_ms(model_dir: Path, rgb: np.ndarray, xyz: np.ndarray, n: int) -> float:
    """Median CPU time (ms) of one session run on `rgb`/`xyz`'s preprocessed part, measured here on the
    service's session settings (one intra-op thread: ONNX Runtime computes in the calling thread, whose
    CPU time this is; no spinning). Unlike the answers' wall time, it does not grow with other load."""
    import time

    from service.preprocessing import PreprocessConfig, preprocess_part

    config = PreprocessConfig.from_dict(harness.read_manifest(model_dir)["preprocessing"])
    part = preprocess_part(rgb, xyz, config)
    inputs = {"rgb": part.rgb[None], "depth": part.depth[None]}
    session = harness.ort_session(model_dir / "model.onnx", threads=1, spinning=False)
    times = harness.interleaved({"run": lambda: session.run(["scores", "maps"], inputs)}, n, 3, 0.0, time.thread_time)
    return float(np.median(times["run"]))


def stage_of(stack: str) -> str:
    """The stage of one collapsed py-spy stack ("outer (file:line);...;inner (file:line)")."""
    frames = stack.split(";")
    if any(frames[-1].startswith(wait) for wait in WAITS):
        return WAITING
    for frame in reversed(frames):
        for stage, needles in STAGE_RULES:
            if any(needle in frame for needle in needles):
                return stage
    return OUTSIDE


def read_profile(path: Path, n: int, rate_hz: int) -> dict[str, Any]:
    """py-spy's raw output (one "stack count" line per distinct stack) → sampled ms per part by stage."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack)] += int(count)
    total = sum(counts.values())
    if total == 0:
        raise RuntimeError(f"py-spy wrote no samples to {path}")
    ms = {stage: round(c / rate_hz / n * 1e3, 3) for stage, c in counts.most_common()}
    return {"samples": total, "ms_per_part": ms, "share_pct": {s: round(100 * c / total, 1) for s, c in counts.items()}}


def profile_block(
    service: service_load.Service, payload: service_load.Payload, n: int, out_dir: Path, label: str
) -> dict[str, Any] | None:
    """py-spy samples of the service (every thread, idle ones left out) over `n` predictions; None when
    py-spy is not installed."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.is_file():
        return None
    raw = out_dir / f"pyspy-{label}.txt"
    command = [str(spy), "record", "--nonblocking", "--format", "raw", "-r", str(PROFILE_RATE_HZ)]
    command += ["-o", str(raw), "--pid", str(service.process.pid)]
    with open(out_dir / f"pyspy-{label}.log", "wb") as log_file:
        spy_process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with service_load.KeepAliveClient(service.url) as client:
            post_many(client, payload, 2)  # py-spy attached before the counted parts
            post_many(client, payload, n)
    finally:
        spy_process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy_process.wait(timeout=60)
    return read_profile(raw, n + 2, PROFILE_RATE_HZ)


def measure_model(
    name: str,
    model_dir: Path,
    parts: dict[tuple[str, int], service_load.Payload],
    session_cpu: float,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    """Every part and size on this checkout's service and, with --baseline-tree, on that checkout's too:
    both services run at once and each round measures them in turn (order alternating by round), so a
    change of load hits both alike; `paired` gives the median over rounds of the per-round difference."""
    roots = {"current": harness.REPO}
    if args.baseline_tree is not None:
        roots = {"baseline": args.baseline_tree, **roots}
    blocks: dict[str, dict[tuple[str, int], list[dict[str, Any]]]] = {v: {key: [] for key in parts} for v in roots}
    profiles: dict[str, dict[str, Any]] = {v: {} for v in roots}
    peak_rss_mb: dict[str, float] = {}
    settings = {**SETTINGS, "data_dir": str(tmp / f"data-{name}")}
    with ExitStack() as stack:
        services = {
            variant: stack.enter_context(
                service_load.running_service(
                    model_dir.parent,
                    model_dir.name,
                    {**settings, "data_dir": str(tmp / f"data-{name}-{variant}")},
                    tmp / f"service-{name}-{variant}.log",
                    root=root,
                )
            )
            for variant, root in roots.items()
        }
        for round_index in range(args.rounds):
            order = list(services) if round_index % 2 == 0 else list(reversed(services))
            for key, payload in parts.items():
                for variant in order:
                    blocks[variant][key].append(measure_block(services[variant], payload, args.n, args.warmup))
        for variant, service in services.items():
            if not args.no_profile:
                for (part, size), payload in parts.items():
                    label = f"{name}-{variant}-{part}-{size}"
                    profiles[variant][f"{part}@{size}"] = profile_block(service, payload, args.n, tmp, label)
            peak_rss_mb[variant] = round((service.status_kb("VmHWM") or 0) / 1024, 1)
    rows = []
    for variant in roots:
        for (part, size), measured in blocks[variant].items():
            row: dict[str, Any] = {"model": name, "variant": variant, "part": part, "size": size}
            for stat in ("cpu_ms", "session_ms", "outside_ms"):
                row[stat] = round(float(np.median([m[stat] for m in measured])), 3)
            row["cpu_ms_rounds"] = [round(m["cpu_ms"], 3) for m in measured]
            row["session_cpu_ms"] = round(session_cpu, 3)
            row["outside_by_session_cpu_ms"] = round(row["cpu_ms"] - session_cpu, 3)
            row["profile"] = profiles[variant].get(f"{part}@{size}")
            rows.append(row)
    paired = {}
    if "baseline" in roots:
        for part, size in parts:
            now, before = blocks["current"][(part, size)], blocks["baseline"][(part, size)]
            diffs = [a["cpu_ms"] - b["cpu_ms"] for a, b in zip(now, before, strict=True)]
            paired[f"{part}@{size}"] = {
                "current_minus_baseline_cpu_ms": round(float(np.median(diffs)), 3),
                "rounds": [round(d, 3) for d in diffs],
            }
    return {"rows": rows, "paired": paired, "service_peak_rss_mb": peak_rss_mb, "settings": settings}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=harness.REPO / "models" / "demo")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 400, 800], help="part side, pixels")
    p.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=["good"], help="demo sample parts")
    p.add_argument("--n", type=int, default=60, help="timed predictions per block")
    p.add_argument("--warmup", type=int, default=10, help="predictions before each block")
    p.add_argument("--rounds", type=int, default=3, help="blocks per part and size, in rounds")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy stage split")
    p.add_argument("--no-fake", action="store_true", help="only the model in --model-dir")
    p.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks and the service logs there")
    p.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/base main`) whose service is measured beside this one",
    )
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args()
    args.model_dir = args.model_dir.resolve()  # the services may run from another checkout
    if args.baseline_tree is not None and not (args.baseline_tree / "service" / "__main__.py").is_file():
        p.error(f"--baseline-tree {args.baseline_tree} holds no service/__main__.py")
    if args.quick:
        args.n, args.warmup, args.rounds = min(args.n, 20), min(args.warmup, 2), 1
    return args


def main() -> int:
    args = parse_args()
    result = harness.start_result("cpu_cost", "bench_cpu_cost.py", args.wait_quiet)
    manifest = harness.read_manifest(args.model_dir)
    parts = {}
    for part in args.parts:
        for size in args.sizes:
            rgb, xyz = resized_part(part, size)
            png, tiff = service_load.encode_part(rgb, xyz)
            parts[(part, size)] = service_load.build_payload(png, tiff, (size, size))
    first = resized_part(args.parts[0], args.sizes[0])  # the session's cost does not depend on the part
    result["settings"] = {
        "service": SETTINGS,
        "n": args.n,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "sizes": args.sizes,
        "parts": args.parts,
        "profile_rate_hz": None if args.no_profile else PROFILE_RATE_HZ,
        "model_dir": str(args.model_dir),
        "baseline_tree": None if args.baseline_tree is None else str(args.baseline_tree),
    }
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-cost-") as tmp_name:
        tmp = Path(tmp_name)
        if args.profile_dir is not None:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            tmp = args.profile_dir
        session_cpu = session_cpu_ms(args.model_dir, *first, args.n)
        models[args.model_dir.name] = measure_model(args.model_dir.name, args.model_dir, parts, session_cpu, args, tmp)
        if not args.no_fake:
            size = int(manifest["image_size"])
            fake = write_fake_model(
                tmp / "models", "fake", graph=build_graph(size), size=size, preprocessing=manifest["preprocessing"]
            )
            session_cpu = session_cpu_ms(fake, *first, args.n)
            models["fake (GPU stand-in)"] = measure_model("fake", fake, parts, session_cpu, args, tmp)
    result["models"] = models
    headers = ["model / part", "size", "process CPU", "session wall", "outside", "session CPU", "outside'"]
    headers.append("top stages outside (sampled ms)")
    table = []
    for model in models.values():
        for row in model["rows"]:
            top = ""
            if row["profile"]:
                shown = ("session", WAITING)
                stages = [(s, v) for s, v in row["profile"]["ms_per_part"].items() if s not in shown]
                top = ", ".join(f"{s} {v:.1f}" for s, v in stages[:4])
            table.append(
                [
                    f"{row['model']} / {row['variant']} / {row['part']}",
                    row["size"],
                    row["cpu_ms"],
                    row["session_ms"],
                    row["outside_ms"],
                    row["session_cpu_ms"],
                    row["outside_by_session_cpu_ms"],
                    top,
                ]
            )
    print("\nms per part. outside = process CPU - the answers' session wall time; outside' = process CPU - the")
    print("session's CPU time measured in this process (robust to load).")
    harness.print_table(headers, table)
    pairs = [
        [f"{name} / {key}", p["current_minus_baseline_cpu_ms"], str(p["rounds"])]
        for name, m in models.items()
        for key, p in m["paired"].items()
    ]
    if pairs:
        print("\nprocess CPU per part, current - baseline, paired by round (ms)")
        harness.print_table(["model / part", "median", "rounds"], pairs)
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
