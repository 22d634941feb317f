"""Smoke tests for the benchmark scripts: each runs end to end in a tiny mode on the fake ONNX model, so the
scripts keep working as the service changes. Numbers are not checked, only that they exist and make sense."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.service.fake_model import SIZE, write_fake_model

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_cpu_cost  # noqa: E402
import gpu_env  # noqa: E402
import harness  # noqa: E402

SERVER_STAGES = ("queue", "decode", "preprocess", "inference", "postprocess")  # the response's timings_ms
SCRIPT_TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite


def run_script(name: str, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = Path(str(args[args.index("--out") + 1])) if "--out" in args else None
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    data = json.loads(out.read_text()) if out is not None and out.is_file() else {}
    return proc, data


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_model(tmp_path_factory.mktemp("models"))


def assert_machine(data: dict[str, Any]) -> None:
    m = data["machine"]
    assert m["cpu_count"] >= 1 and m["cpu_model"] and m["python"] and m["onnxruntime"]
    assert len(m["load_average_start"]) == 3 and m["date"].startswith("20")


def assert_stats(s: dict[str, float]) -> None:
    assert 0 < s["min_ms"] <= s["median_ms"] <= s["p95_ms"] and s["n"] >= 1


def test_latency_quick(fake_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    proc, data = run_script(
        "bench_latency.py", "--quick", "--no-torch", "--model-dir", fake_dir, "--cache-dir", tmp_path, "--out", out
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best:" in proc.stdout and "http/pipeline" in proc.stdout
    assert_machine(data)
    grid = data["session_options"]
    assert len(grid["rows"]) == 8  # threads 1/2 × basic/extended/all, + no spinning at 1 and 2 threads
    assert grid["best"] in {r["variant"] for r in grid["rows"]}
    (model,) = data["models"]
    paths = {f"ort_session@{SIZE}", f"ort_pipeline@{SIZE}", f"http@{SIZE}", f"http_png@{SIZE}", "http_healthz"}
    assert set(model["paths"]) == paths
    for s in model["paths"].values():
        assert_stats(s)
    ratios = model["ratios"][str(SIZE)]
    expected = model["paths"][f"http@{SIZE}"]["median_ms"] / model["paths"][f"ort_pipeline@{SIZE}"]["median_ms"]
    assert ratios["http_over_pipeline_median"] == pytest.approx(expected, abs=1e-3)
    assert ratios["target_met"] == (ratios["http_over_pipeline_median"] <= 1.3)
    assert ratios["target_met_paired"] == (ratios["http_over_pipeline_paired"] <= 1.3)
    assert ratios["http_over_session_paired"] > 0 and ratios["http_over_session_min"] > 0
    stages = model["stages"][f"http@{SIZE}"]
    assert set(stages["share_pct"]) == {*SERVER_STAGES, "handler_other", "outside_handler"}
    assert stages["median_ms"]["inference"] > 0 and model["service_peak_rss_mb"] > 0


def test_throughput_quick(fake_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc, data = run_script(
        "bench_throughput.py", "--quick", "--model-dir", fake_dir, "--cache-dir", tmp_path, "--out", out,
        "--clients", "1", "3", "--duration-s", "0.3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_machine(data)
    assert set(data["modes"]) == {"batching_off", "batching_on"}
    assert data["modes"]["batching_on"]["settings"]["batch_max_size"] == 8
    assert data["modes"]["batching_on"]["settings"]["max_inflight"] >= 8  # or batches could never fill
    for mode in data["modes"].values():
        assert [lv["clients"] for lv in mode["levels"]] == [1, 3]
        for lv in mode["levels"]:
            assert lv["answered"] >= lv["clients"] and lv["refused"] == {}, lv
            assert lv["throughput_parts_per_s"] > 0
            assert_stats(lv["latency"])
            assert lv["peak_rss_mb"] >= mode["idle_rss_mb"] > 0
    assert set(data["throughput_on_over_off"]) == {"1", "3"}


def test_admission_quick(fake_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "admission.json"
    proc, data = run_script(
        "bench_admission.py", "--quick", "--models-dir", fake_dir.parent, "--model", fake_dir.name, "--out", out
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: over the target (a loaded machine), still a result
    assert_machine(data)
    assert set(data["variants"]) == {"bare", "gate, admitted", "gate, refused 401"}
    for variant in data["variants"].values():
        assert_stats(variant)
    assert data["within_target"] == (data["added_ms"] <= data["target_added_ms"] == 0.3)


@pytest.mark.skipif(gpu_env.probe()["gpu_present"], reason="this machine has a GPU: the no-GPU path is unreachable")
def test_gpu_check_says_no_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc, data = run_script("gpu_check.py", "--budget-s", "20", "--out", out)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "NO GPU" in proc.stdout
    assert data["status"] == "no_gpu" and data["models"] == [] and data["environment"]["gpu_present"] is False


def test_gpu_check_cpu_dry_run(fake_dir: Path, tmp_path: Path) -> None:
    """Every GPU-check step on the CPU provider: provider check, profile, parity, timings, HTTP both modes,
    the workers sweep."""
    out = tmp_path / "gpu.json"
    proc, data = run_script(
        "gpu_check.py", "--cpu-dry-run", "--no-torch", "--model-dir", fake_dir, "--wrn-sizes", "--repeats", "2",
        "--clients", "1", "2", "--http-seconds", "0.3", "--batches", "1", "4", "--workers", "1", "2",
        "--sweep-batches", "2", "--cache-dir", tmp_path, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU DRY RUN" in proc.stdout and data["dry_run"] is True
    assert data["status"] == "cpu dry run: ok" and data["failures"] == []
    (demo,) = data["models"]
    assert demo["session_providers"][0] == "CPUExecutionProvider"
    assert demo["profile"]["nodes_by_provider"]["CPUExecutionProvider"] > 0
    assert demo["max_abs_diff_cuda_vs_cpu"] == {"scores": 0.0, "maps": 0.0}
    assert_stats(demo["ort_cuda_b1"])
    assert [lv["clients"] for lv in demo["http"]["batching_on"]] == [1, 2]
    assert demo["not_run"] == ["torch CUDA timings"]
    sweep = demo["workers_sweep"]
    assert [(c["workers"], c["batch_max_size"], c["clients"]) for c in sweep["cells"]] == [(1, 2, 2), (2, 2, 4)]
    for cell in sweep["cells"]:
        assert cell["parts_per_s"] > 0 and cell["refused"] == {} and cell["cpu_ms_per_part"] > 0
        cpu_bound = min(cell["workers"], sweep["cores"]) * 1e3 / cell["cpu_ms_per_part"]
        assert cell["cpu_bound_parts_per_s"] == pytest.approx(cpu_bound, rel=0.01)
        assert cell["gpu_memory_mb_per_worker"] is None  # no nvidia-smi here
    assert "workers sweep" in proc.stdout and "CPU-bound parts/s" in proc.stdout
    precisions = demo["precisions_io_binding"]  # fp32 and fp16 through the engine's IO binding, on the CPU here
    assert precisions["device"] == "cpu" and precisions["fp16_score_max_abs_diff"] < 5e-3
    for precision in ("fp32", "fp16"):
        assert precisions[precision]["b1"]["parts_per_s"] > 0 and precisions[precision]["b4"]["n"] == 2


def test_gpu_budget_skips_what_does_not_fit() -> None:
    budget = gpu_env.Budget(10)
    assert budget.allow("small", 1)
    assert not budget.allow("large", 60)
    assert budget.skipped and budget.skipped[0].startswith("large")


def test_profile_providers_counts_nodes_and_convs(tmp_path: Path) -> None:
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {"cat": "Node", "name": "shape_kernel_time", "args": {"provider": "CPUExecutionProvider", "op_name": "Shape"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    found = gpu_env.profile_providers(str(path))
    assert found["nodes_by_provider"] == {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 1}
    assert found["conv_by_provider"] == {"CUDAExecutionProvider": 1}


def test_stats_and_interleaving() -> None:
    s = harness.stats([float(v) for v in range(1, 101)])
    assert s["median_ms"] == 50.5 and s["p95_ms"] == pytest.approx(95.05) and s["min_ms"] == 1.0
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = harness.interleaved(fns, 20, 1, 0.0)
    assert order[:3] == ["a", "b", "c"]  # one warm-up each
    rounds = [order[i : i + 3] for i in range(3, len(order), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds) and len(rounds) == 20  # each once per round
    assert len({tuple(r) for r in rounds}) > 1  # in varying order
    assert [len(v) for v in times.values()] == [20, 20, 20]


@pytest.mark.slow
def test_torch_and_wrn_paths(fake_dir: Path, tmp_path: Path) -> None:
    """The PyTorch side: a WideResNet-50-2 export (random weights, 32 px) timed eager, bare, over HTTP."""
    out = tmp_path / "latency.json"
    proc, data = run_script(
        "bench_latency.py", "--quick", "--model-dir", fake_dir, "--wrn-sizes", "32", "--grid-threads", "1",
        "--grid-levels", "all", "--cache-dir", tmp_path, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fake, wrn = data["models"]
    assert "no PyTorch twin" in fake["torch_source"] and "torch_eager" not in fake["paths"]
    assert wrn["backbone"] == "wide_resnet50_2" and wrn["image_size"] == 32 and wrn["feature_dim"] == 1536
    assert_stats(wrn["paths"]["torch_eager"])
    assert wrn["ratios"]["32"]["torch_over_session_median"] > 0


def test_results_name_no_path_of_this_machine() -> None:
    """Committed results keep the checkout's and the temporary directory's paths out (relative / $TMPDIR)."""
    tmp = Path(tempfile.gettempdir())
    result = {
        "out": harness.REPO / "benchmarks" / "results" / "latency.json",
        "settings": {"cache_dir": str(tmp / "bridgenet-bench"), "model_dir": "models/demo"},
        "rows": [{"model_dir": str(tmp / "bridgenet-bench" / "wrn-288")}, "/v1/predict", 3],
    }
    assert harness.portable_paths(result) == {
        "out": "benchmarks/results/latency.json",
        "settings": {"cache_dir": "$TMPDIR/bridgenet-bench", "model_dir": "models/demo"},
        "rows": [{"model_dir": "$TMPDIR/bridgenet-bench/wrn-288"}, "/v1/predict", 3],
    }


def test_preprocessing_pil_comparison_takes_its_image_as_an_argument(tmp_path: Path) -> None:
    image = tmp_path / "part.png"
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert cv2.imwrite(str(image), rgb)
    out = tmp_path / "pre.json"
    proc, data = run_script("bench_preprocessing.py", "--repeats", "1", "--pil-image", image, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pil = data["rgb_filter_vs_pil"]
    assert pil["image"] == "part.png" and pil["hw"] == [96, 128] and 0 <= pil["mean_abs"] <= pil["max_abs"] <= 1
    proc, data = run_script("bench_preprocessing.py", "--repeats", "1", "--out", out)
    assert proc.returncode == 0 and data["rgb_filter_vs_pil"] is None
    assert "skipped (pass --pil-image PATH" in proc.stdout


def test_precision_quick(fake_dir: Path, tmp_path: Path) -> None:
    """fp32 beside its int8 variants (made by the exporter's code) and fp16: paired session times, the
    per-operator profile, and end-to-end rounds through two services."""
    out = tmp_path / "precision.json"
    proc, data = run_script(
        "bench_precision.py", "--quick", "--model-dir", fake_dir, "--int8-dir", fake_dir, "--variants", "int8",
        "fp16", "--e2e-seconds", "0.3", "--cache-dir", tmp_path, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    paths = data["sessions"]["paths"]
    assert set(paths) == {"fp32", "int8", "fp16"} and paths["fp32"]["speedup_paired"] == 1.0
    for s in paths.values():
        assert_stats(s)
    cpu = data["cpu_one_thread"]  # CPU time of each graph's run on one intra-op thread
    assert set(cpu) == set(paths) and cpu["fp32"]["speedup_paired"] == 1.0
    for s in cpu.values():
        assert_stats(s)
    assert data["profile_ms_per_run"]["fp32"] and data["profile_ms_per_run"]["int8"]
    assert data["end_to_end"]["fp32"]["answered"] >= 1 and "int8/fp32" in data["end_to_end"]["paired_ratio"]


def test_upload_quick(fake_dir: Path, tmp_path: Path) -> None:
    """Sequential and overlapped decode services side by side with the model work they wrap."""
    out = tmp_path / "upload.json"
    proc, data = run_script(
        "bench_upload.py", "--quick", "--model-dir", fake_dir, "--cache-dir", tmp_path, "--out", out
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    for key in (f"http_seq_png@{SIZE}", f"http_overlap_png@{SIZE}", "http_overlap_tiffrgb@800", "http_seq_png@800"):
        assert_stats(data["paths"][key])
        assert data["ratios"][key]["http_over_pipeline_paired"] > 0
    assert data["ratios"]["overlap_over_seq_png@800"] > 0


def test_station_quick(fake_dir: Path, tmp_path: Path) -> None:
    """Every station configuration answered parts, with paired ratios against the first."""
    out = tmp_path / "station.json"
    proc, data = run_script(
        "bench_station.py", "--quick", "--fp32", fake_dir, "--int8", fake_dir, "--configs", "fp32, defaults",
        "int8, 1 thread per request", "int8, batches of 2", "--cache-dir", tmp_path, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    runs = data["runs"]
    for name in ("fp32, defaults", "int8, 1 thread per request", "int8, batches of 2"):
        assert runs[name]["answered"] >= 1 and runs[name]["throughput_parts_per_s"] > 0, name
    assert set(runs["paired_ratio"]) == {
        "int8, 1 thread per request/fp32, defaults",
        "int8, batches of 2/fp32, defaults",
    }
    assert data["settings"]["int8, batches of 2"]["batch_max_size"] == 2


def test_cpu_cost_quick(fake_dir: Path, tmp_path: Path) -> None:
    """Process CPU per part on the fake model served twice (as the model and as its GPU stand-in), each by
    this checkout and by a baseline checkout (this one again) in turn, with the stage split of py-spy's
    samples where it is installed."""
    out = tmp_path / "cpu_cost.json"
    proc, data = run_script(
        "bench_cpu_cost.py", "--quick", "--model-dir", fake_dir, "--sizes", "64", "96", "--n", "12",
        "--baseline-tree", REPO, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    assert set(data["models"]) == {fake_dir.name, "fake (GPU stand-in)"}
    known = {stage for stage, _ in bench_cpu_cost.STAGE_RULES} | {bench_cpu_cost.WAITING, bench_cpu_cost.OUTSIDE}
    for model in data["models"].values():
        keys = [(r["variant"], r["part"], r["size"]) for r in model["rows"]]
        assert keys == [(v, "good", s) for v in ("baseline", "current") for s in (64, 96)]
        for row in model["rows"]:
            assert row["cpu_ms"] > 0 and row["session_ms"] > 0 and row["session_cpu_ms"] > 0
            assert row["outside_ms"] == pytest.approx(row["cpu_ms"] - row["session_ms"], abs=2e-3)
            assert row["outside_by_session_cpu_ms"] == pytest.approx(row["cpu_ms"] - row["session_cpu_ms"], abs=2e-3)
            profile = row["profile"]
            if profile is None:  # py-spy not installed: the split is absent, never invented
                continue
            assert profile["samples"] > 0 and sum(profile["share_pct"].values()) == pytest.approx(100, abs=0.5)
            assert set(profile["ms_per_part"]) <= known and all(v > 0 for v in profile["ms_per_part"].values())
        rows = {(r["variant"], r["size"]): r for r in model["rows"]}
        for size in (64, 96):
            paired = model["paired"][f"good@{size}"]
            (diff,) = paired["rounds"]  # one round in --quick
            now, before = rows[("current", size)]["cpu_ms_rounds"][0], rows[("baseline", size)]["cpu_ms_rounds"][0]
            assert diff == pytest.approx(now - before, abs=2e-3) == paired["current_minus_baseline_cpu_ms"]
        assert min(model["service_peak_rss_mb"].values()) > 0 and model["settings"]["audit"] == "on"


def test_cpu_cost_stages_from_stacks() -> None:
    """A sampled stack is charged to its innermost known frame; a thread parked on a lock is no CPU."""
    stage_of = bench_cpu_cost.stage_of
    run = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
    assert (
        stage_of(f"{run};Engine.infer (service/engine/engine.py:271);Session.run (onnxruntime/capi/x.py:3)")
        == "session"
    )
    assert stage_of(f"{run};preprocess_cloud (service/preprocessing/pipeline.py:61)") == "preprocess"
    assert stage_of(f"{run};record (service/records/store.py:9);Logger.info (logging/__init__.py:1)") == "logging"
    assert stage_of(run) == bench_cpu_cost.WAITING
    assert stage_of("main (somewhere.py:1)") == bench_cpu_cost.OUTSIDE


def test_workers_quick(fake_dir: Path, tmp_path: Path) -> None:
    """1 and 2 worker processes side by side on the fake model, and at one client on the --model-dir model."""
    out = tmp_path / "workers.json"
    proc, data = run_script("bench_workers.py", "--quick", "--model-dir", fake_dir, "--sizes", "64", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    for measured in (data["fake"]["64"], data["demo_one_client"]):
        for config in ("1 worker", "2 workers"):
            assert measured[config]["throughput_parts_per_s"] > 0 and measured[config]["refused"] == {}
            assert measured[config]["cpu_ms_per_part"] > 0  # every process of the service counted
        assert measured["paired_ratio"]["2 workers/1 worker"] > 0
    assert data["demo_one_client"]["1 worker"]["clients"] == 1
    assert [row["model, part, clients"] for row in data["table"]] == ["fake 64 px ×2", f"{fake_dir.name} 32 px ×1"]


def write_parts(folder: Path, seeds: range, bright: bool = False) -> None:
    """rgb/ + xyz/ of fake parts; `bright`: a white block, which the fake model scores far higher."""
    from tests.service.fake_model import make_part, tiff_bytes

    (folder / "rgb").mkdir(parents=True)
    (folder / "xyz").mkdir()
    for seed in seeds:
        rgb, xyz = make_part(seed=seed)
        if bright:
            rgb[10:30, 10:30] = 255
        cv2.imwrite(str(folder / "rgb" / f"{seed:03d}.png"), rgb[:, :, ::-1])
        (folder / "xyz" / f"{seed:03d}.tiff").write_bytes(tiff_bytes(xyz))


@pytest.mark.slow
def test_commission_study_runs_the_loop_through_a_live_service(tmp_path: Path) -> None:
    # Threshold 0.81: a few of the fake good parts (scores about 0.80-0.82) are NG, reviewed as false rejects.
    model = write_fake_model(tmp_path / "models", "fake", threshold=0.81)
    write_parts(tmp_path / "good", range(30))
    for kind, seeds in (("dent", range(100, 103)), ("stain", range(103, 106))):
        write_parts(tmp_path / "test" / kind, seeds, bright=True)
    out = tmp_path / "study.json"
    good, test = str(tmp_path / "good"), str(tmp_path / "test")
    args = ["--model", str(model), "--line-good", good, "--line-count", "20", "--line-defects", test,
            "--unseen-good", good, "--unseen-first", "20", "--unseen-count", "10", "--unseen-defects", test,
            "--min-parts", "10", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.commission_study", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    line, before, after = data["line"], data["before"], data["after"]
    assert line["good_sample"]["n"] == 20 and line["defect_sample"]["n"] == 6
    assert line["good_sample"]["false_rejects"] >= 1
    assert after["n_parts"] == 20 and after["unseen"]["threshold"] == after["line_defects"]["threshold"]
    assert after["version"] != before["version"] and after["unseen_verdicts_ng"]["defects"] == 6
    assert after["unseen"]["detected"] == "6 of 6" and after["unseen"]["false_rejects"].endswith("of 10")
    assert 0 < after["distribution_free_upper_bound"] < 1


def test_shadow_quick(fake_dir: Path, tmp_path: Path) -> None:
    """Two real services, one shadowing the model with a copy of itself: both sides timed, nothing skipped."""
    from tests.service.fake_model import make_part, png_bytes, tiff_bytes

    rgb, xyz = make_part(seed=1)
    (tmp_path / "rgb.png").write_bytes(png_bytes(rgb))
    (tmp_path / "xyz.tiff").write_bytes(tiff_bytes(xyz))
    out = tmp_path / "shadow.json"
    proc, data = run_script(
        "bench_shadow.py", "--quick", "--model", fake_dir, "--rgb", tmp_path / "rgb.png", "--xyz",
        tmp_path / "xyz.tiff", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_machine(data)
    for side in ("off", "on"):
        assert data[side]["n"] == 6 and 0 < data[side]["median_ms"] <= data[side]["p99_ms"]
    assert len(data["paired_differences_ms"]) == 2 and data["shadow_skipped"] == 0


def test_drift_on_cached_scores(fake_dir: Path, tmp_path: Path) -> None:
    """Replayed scores: a stable stream raises no alarm, a large shift is found within the horizon."""
    rng = np.random.default_rng(0)
    # The fake manifest's good scores: p50 0.5, p95 0.52 (logit sd ≈ 0.049).
    stable = [[float(1 / (1 + np.exp(-x))), 0.0] for x in rng.normal(0.0, 0.049, 100)]
    shifted = [[float(1 / (1 + np.exp(-x))), 0.0] for x in rng.normal(0.2, 0.049, 100)]
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps(
            {"model": {"name": "fake", "version": "1"}, "data": "synthetic", "threshold": 0.6,
             "stable": stable, "shifted": {"up 4 sd": shifted}}
        )
    )  # fmt: skip
    out = tmp_path / "drift.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_drift.py"), str(scores), "--model", str(fake_dir), "--trials", "3",
         "--horizon", "300", "--stable-parts", "1000", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["stable"]["drifting_alarms_per_10k"] == 0
    up = data["shifts"]["up 4 sd"]
    assert up["detected"] == 3 and 0 < up["delay_median"] <= 300
    assert "| up 4 sd |" in proc.stdout


def test_models_quick(fake_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    proc, data = run_script("bench_models.py", "--quick", "--model-dirs", fake_dir, fake_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "× first (paired)" in proc.stdout
    assert_machine(data)
    first, second = data["models"]
    assert first["paired_ratio"] == 1.0 and second["paired_ratio"] > 0 and first["n"] == data["repeats"] == 3
    assert_stats(first)
    proc, _ = run_script("bench_models.py", "--quick", "--model-dirs", fake_dir, "--out", out)
    assert proc.returncode != 0 and "at least two" in proc.stderr
