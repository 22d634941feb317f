"""The upload path, sequential vs overlapped decode, side by side in one run.

Two services on the same model, one decoding in turn (BRIDGENET_DECODE_THREADS=0) and one decoding the RGB
image while the point cloud becomes a depth image (the default, 2 threads), timed interleaved with the model
work they wrap (`ort_pipeline`: preprocessing + session + map back to the input size, as bench_latency.py
defines it) and the bare `session.run`. Parts at the model's size and at 800×800 (MVTec 3D-AD's), RGB as
PNG and, at 800, as uncompressed TIFF (the fast path for line clients).

    python benchmarks/bench_upload.py --model-dir models/demo --wait-quiet 1.5
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import service_load
from bench_latency import TARGET_RATIO, paired
from bench_preprocessing import synthetic_part

from service.postprocessing.maps import defect_area_fraction, map_to_input_size
from service.preprocessing import PreprocessConfig, preprocess_part

RESULTS = harness.RESULTS_DIR / "upload.json"
TARGETS = {"native": 1.10, 800: TARGET_RATIO}  # http / model work, paired
MODES = {"seq": 0, "overlap": 2}  # BRIDGENET_DECODE_THREADS of each service


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("models/demo"), help="exported model folder")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 30; quick 3)")
    p.add_argument("--gap-ms", type=float, default=20.0)
    harness.add_common_arguments(p, RESULTS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 30)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_logging()
    load_start = harness.wait_for_quiet(args.wait_quiet, 900) if args.wait_quiet else None
    manifest = harness.read_manifest(args.model_dir)
    size = int(manifest["image_size"])
    config = PreprocessConfig.from_dict(manifest["preprocessing"])
    threshold = float(manifest["threshold"]["value"])
    session = harness.ort_session(args.model_dir / "model.onnx")
    sizes = [size, 800]
    parts = {hw: synthetic_part(hw)[:2] for hw in sizes}
    fns: dict[str, Any] = {}

    def pipeline(rgb: np.ndarray, xyz: np.ndarray) -> float:
        part = preprocess_part(rgb, xyz, config)
        scores, maps = session.run(["scores", "maps"], {"rgb": part.rgb[None], "depth": part.depth[None]})
        return defect_area_fraction(map_to_input_size(maps[0], *rgb.shape[:2]), threshold) + float(scores[0])

    for hw, (rgb, xyz) in parts.items():
        pre = preprocess_part(rgb, xyz, config)
        fns[f"ort_session@{hw}"] = partial(
            session.run, ["scores", "maps"], {"rgb": pre.rgb[None], "depth": pre.depth[None]}
        )
        fns[f"ort_pipeline@{hw}"] = partial(pipeline, rgb, xyz)
    payloads = {}
    for hw, (rgb, xyz) in parts.items():
        png, tiff = service_load.encode_part(rgb, xyz)
        payloads[f"png@{hw}"] = service_load.build_payload(png, tiff, (hw, hw), "none")
        if hw != size:
            payloads[f"tiffrgb@{hw}"] = service_load.build_payload(
                service_load.encode_rgb_tiff(rgb), tiff, (hw, hw), "none"
            )
    base: dict[str, str | int | float] = {"providers": "cpu", "batch_max_size": 1, "request_timeout_s": 120}
    log_dir = args.cache_dir / "logs"
    stages: dict[str, list[dict[str, float]]] = {}
    with (
        service_load.running_service(
            args.model_dir.parent, args.model_dir.name, base | {"decode_threads": 0}, log_dir / "upload-seq.log"
        ) as seq,
        service_load.running_service(
            args.model_dir.parent, args.model_dir.name, base | {"decode_threads": 2}, log_dir / "upload-overlap.log"
        ) as overlap,
        service_load.KeepAliveClient(seq.url) as seq_client,
        service_load.KeepAliveClient(overlap.url) as overlap_client,
    ):
        clients = {"seq": seq_client, "overlap": overlap_client}

        def http(client: service_load.KeepAliveClient, payload: service_load.Payload, key: str) -> None:
            result = service_load.post_part(client, payload)
            if result.status != 200:
                raise RuntimeError(f"POST /v1/predict answered {result.status}")
            stages.setdefault(key, []).append(result.server_ms)

        for mode, client in clients.items():
            for name, payload in payloads.items():
                key = f"http_{mode}_{name}"
                fns[key] = partial(http, client, payload, key)
        times = harness.interleaved(fns, args.repeats, 2, args.gap_ms / 1e3)

    paths = {k: harness.stats(v) for k, v in times.items()}
    ratios: dict[str, Any] = {}
    table = []
    for hw in sizes:
        for mode in MODES:
            for fmt in ("png", "tiffrgb"):
                key = f"http_{mode}_{fmt}@{hw}"
                if key not in times:
                    continue
                over_pipe = paired(times, key, f"ort_pipeline@{hw}")
                over_session = paired(times, key, f"ort_session@{hw}")
                target = TARGETS["native" if hw == size else 800]
                decode = float(np.median([s.get("decode", 0.0) for s in stages[key]]))
                preprocess = float(np.median([s.get("preprocess", 0.0) for s in stages[key]]))
                ratios[key] = {
                    "http_over_pipeline_paired": over_pipe,
                    "http_over_session_paired": over_session,
                    "http_over_pipeline_median": round(
                        paths[key]["median_ms"] / paths[f"ort_pipeline@{hw}"]["median_ms"], 3
                    ),
                    "server_decode_ms": round(decode, 2),
                    "server_preprocess_ms": round(preprocess, 2),
                    "target": target,
                    "target_met_paired": over_pipe <= target,
                }
                table.append(
                    [
                        key,
                        paths[key]["median_ms"],
                        paths[key]["min_ms"],
                        round(decode, 1),
                        round(preprocess, 1),
                        over_pipe,
                        over_session,
                        target,
                    ]
                )
        for mode_a, mode_b in (("overlap", "seq"),):
            key_a, key_b = f"http_{mode_a}_png@{hw}", f"http_{mode_b}_png@{hw}"
            ratios[f"overlap_over_seq_png@{hw}"] = paired(times, key_a, key_b)
    print(f"\nupload path, {args.repeats} rounds interleaved; model work = ort_pipeline (bench_latency.py)")
    harness.print_table(
        [
            "path",
            "median ms",
            "min ms",
            "decode ms",
            "preprocess ms",
            "/ pipeline (paired)",
            "/ session (paired)",
            "target",
        ],
        table,
    )
    harness.print_table(
        ["path", "median ms", "p95 ms", "min ms"],
        [[k, v["median_ms"], v["p95_ms"], v["min_ms"]] for k, v in paths.items() if k.startswith("ort_")],
    )
    for hw in sizes:
        print(f"overlapped / sequential (PNG, {hw}): {ratios[f'overlap_over_seq_png@{hw}']} paired")
    result = {
        "command": harness.command_line("bench_upload.py"),
        "machine": harness.machine(),
        "load_at_start": load_start,
        "model_dir": str(args.model_dir),
        "image_size": size,
        "paths": paths,
        "ratios": ratios,
        "samples_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "load_at_end": harness.wait_for_quiet(1e9, 0),
    }
    harness.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
