"""A tiny deterministic ONNX model (built with onnx.helper, no torch) + manifest, and synthetic test parts."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import tifffile
from onnx import TensorProto, helper

# The graph builder lives with the benchmarks, which must not import from tests; re-exported for the tests.
from benchmarks.fake_graph import SIZE as SIZE
from benchmarks.fake_graph import THRESHOLD as THRESHOLD
from benchmarks.fake_graph import bridgenet_model as bridgenet_model
from benchmarks.fake_graph import build_graph as build_graph
from benchmarks.fake_graph import fake_manifest as fake_manifest
from benchmarks.fake_graph import write_fake_model as write_fake_model
from service.config import Settings
from service.engine import Engine, EngineOptions, PartUpload, PredictResult

# A manifest's calibration block as `training calibrate` writes it (normal_prediction on 12 good parts).
CALIBRATION: dict[str, Any] = {
    "method": "normal_prediction",
    "source": "12 good parts in validation/",
    "n_parts": 12,
    "target_false_reject_rate": 0.01,
    "inputs": {"n": 12, "logit_mean": -0.1, "logit_std": 0.3},
    "expected_false_reject_rate": 0.004,
    "false_reject_rate_interval": [0.0005, 0.02],
    "distribution_free_upper_bound": 0.22,
}


def with_wide_scores(columns: int, declared: list[str | int | None] | None = None) -> onnx.ModelProto:
    """The fake graph with `scores` of shape (batch, columns) instead of (batch,): a model the service must
    refuse at load. `declared`: the output shape the graph claims (default: the real one)."""
    model = build_graph()
    graph = model.graph
    scores = next(n for n in graph.node if n.output[0] == "scores")
    scores.output[0] = "raw_scores"
    graph.node.append(helper.make_node("Unsqueeze", ["raw_scores", "axis1"], ["column"]))
    graph.node.append(helper.make_node("Concat", ["column"] * columns, ["scores"], axis=1))
    graph.output.remove(next(o for o in graph.output if o.name == "scores"))
    shape: list[str | int | None] = declared if declared is not None else ["batch", columns]
    graph.output.insert(0, helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    return model


def with_nan_on_parts(output: str) -> onnx.ModelProto:
    """The fake graph whose `output` ("scores" or "maps") turns NaN for any real part: sqrt of the smallest
    rgb input, which is 0 at the all-zero warm-up (the model loads) and negative for every normalised image.
    With "maps", the scores stay the finite maxima of the clean map."""
    model = build_graph()
    graph = model.graph
    producer = next(n for n in graph.node if output in n.output)
    producer.output[list(producer.output).index(output)] = f"clean_{output}"
    if output == "maps":  # the scores read the clean map
        for node in graph.node:
            node.input[:] = ["clean_maps" if name == "maps" else name for name in node.input]
    graph.node.extend(
        [
            helper.make_node("ReduceMin", ["rgb"], ["rgb_min"], keepdims=0),
            helper.make_node("Sqrt", ["rgb_min"], ["nan_on_parts"]),
            helper.make_node("Add", [f"clean_{output}", "nan_on_parts"], [output]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def with_hot_spot(rows: slice, cols: slice, hot: float = 0.95, cold: float = 0.1, size: int = SIZE) -> onnx.ModelProto:
    """A graph whose map is the same for every part: `cold` everywhere, `hot` on [rows, cols] (model
    resolution); score = max of the map. A defect region at a known place, whatever the part looks like."""
    pattern = np.full((size, size), cold, np.float32)
    pattern[rows, cols] = hot
    nodes = [
        helper.make_node("ReduceMean", ["rgb", "axis1"], ["rgb_mean"], keepdims=0),  # (batch, S, S)
        helper.make_node("Mul", ["rgb_mean", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "pattern"], ["maps"]),
        helper.make_node("ReduceMax", ["maps", "axes12"], ["scores"], keepdims=0),
    ]
    initializers = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("pattern", TensorProto.FLOAT, [size, size], pattern.ravel().tolist()),
    ]
    return bridgenet_model(nodes, initializers, size, "fake_hot_spot")


class GatedEngine(Engine):
    """An engine whose predictions wait until the test opens `gate`; `entered` counts started predictions."""

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def predict_upload(self, upload: PartUpload) -> PredictResult:
        # The complete predict is the one funnel: with the RGB decode overlapped (EngineOptions.decode_threads)
        # it does not go through `predict`.
        self.entered.release()
        if not self.gate.wait(timeout=10):
            raise RuntimeError("the test never opened the gate")
        return super().predict_upload(upload)


# --- synthetic parts -------------------------------------------------------------------------------


def make_part(height: int = 40, width: int = 48, seed: int = 0, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A part on a table: `rgb` (H, W, 3) uint8 noise; `xyz` (H, W, 3) float32 metres, plane at z = 0.5,
    a 2 cm high box in the middle (none when `flat`), a few missing points (NaN and 0)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    z = np.full((height, width), 0.5, np.float32)
    if not flat:
        z[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 0.48
    xyz = np.stack([(u - width / 2) * 1e-3, (v - height / 2) * 1e-3, z], axis=2).astype(np.float32)
    xyz[height // 2, 1] = np.nan
    xyz[1, width // 2] = 0.0
    return rgb, xyz


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB → PNG bytes."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def tiff_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array)
    return out.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: every value the API tests depend on is given, so the environment cannot leak in."""
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "default_model": "fake",
        "models": None,
        "require_cuda": False,
        "providers": "cpu",  # same numbers and fast session start on a GPU machine too
        "threshold_overrides": {},
        "min_defect_area_mm2": {},
        "min_defect_length_mm": {},
        "max_upload_bytes": 1024 * 1024,
        "max_image_side": 1024,
        "max_image_pixels": 1024 * 1024,
        "max_inflight": 2,
        "max_queue": 4,
        "request_timeout_s": 10.0,
        "api_key": None,
        "allow_anonymous": False,
        "environment": "development",
        "log_level": "INFO",
        "intra_op_threads": 1,
        "batch_max_size": 1,
        "batch_wait_ms": 0.0,
        # The audit trail's database and evidence beside the test's models, never in the working directory.
        "data_dir": models_dir.parent / "service-data",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
