"""A tiny deterministic ONNX model with the real model's inputs and outputs (built with onnx.helper, no torch)
and its manifest: the tests' fake model, and the benchmarks' stand-in for a model on a fast accelerator."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from service.manifest import MODEL_FILE, Manifest, manifest_to_metadata, sha256_file, write_manifest_json
from service.preprocessing import PreprocessConfig

SIZE = 32  # model input side S
POOL = 4  # the fake "patch grid" is S / POOL
OPSET = 18
THRESHOLD = 0.9


def build_graph(size: int = SIZE, fails_on_parts: bool = False) -> onnx.ModelProto:
    """(rgb, depth): [batch, 3, S, S] float32 → scores [batch], maps [batch, S, S].

    maps = sigmoid(bilinear-upsampled 4×4-average of (channel mean of rgb + channel mean of depth) / 2),
    scores = max of each map. Deterministic and cheap; it has the real model's inputs and outputs.
    `fails_on_parts`: ONNX Runtime itself fails the run (a Gather index out of bounds) once the largest rgb
    value reaches 1, as it does for any real part after normalisation; the all-zero warm-up still runs.
    """
    nodes = [
        helper.make_node("ReduceMean", ["rgb", "axis1"], ["rgb_mean"], keepdims=1),
        helper.make_node("ReduceMean", ["depth", "axis1"], ["depth_mean"], keepdims=1),
        helper.make_node("Add", ["rgb_mean", "depth_mean"], ["summed"]),
        helper.make_node("Mul", ["summed", "half"], ["mixed"]),
        helper.make_node("AveragePool", ["mixed"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["upsampled"], mode="linear"),
        helper.make_node("Sigmoid", ["upsampled"], ["sig"]),
        helper.make_node("Squeeze", ["sig", "axis1"], ["maps"]),
        helper.make_node("ReduceMax", ["maps", "axes12"], ["scores"], keepdims=0),
    ]
    initializers = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, float(POOL), float(POOL)]),
    ]
    if fails_on_parts:
        nodes[-1].output[0] = "raw_scores"
        nodes += [
            helper.make_node("ReduceMax", ["rgb"], ["rgb_max"], keepdims=0),
            helper.make_node("Cast", ["rgb_max"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["one_zero", "index"], ["picked"]),  # only index 0 (or -1) exists
            helper.make_node("Add", ["raw_scores", "picked"], ["scores"]),
        ]
        initializers.append(helper.make_tensor("one_zero", TensorProto.FLOAT, [1], [0.0]))
    return bridgenet_model(nodes, initializers, size, "fake_bridgenet")


def bridgenet_model(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], size: int, name: str
) -> onnx.ModelProto:
    """A checked model with the real model's inputs (rgb, depth) and outputs (scores, maps) around `nodes`."""
    image: list[str | int | None] = ["batch", 3, size, size]
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[
            helper.make_tensor_value_info("rgb", TensorProto.FLOAT, image),
            helper.make_tensor_value_info("depth", TensorProto.FLOAT, image),
        ],
        outputs=[
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", size, size]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    return model


def fake_manifest(
    name: str, size: int = SIZE, threshold: float = THRESHOLD, version: str = "1", **fields: Any
) -> Manifest:
    """A manifest as training.export.exporter would write it, for the fake graph. `fields`: further manifest fields
    (pixel_threshold, min_defect_area_mm2, ...)."""
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": dt.datetime(2025, 1, 1, tzinfo=dt.UTC).isoformat(),
        "git_sha": "0" * 40,
        "category": "fake",
        "modality": "both",
        "backbone": "fake_pool",
        "image_size": size,
        "feature_dim": 1,
        "inputs": {"rgb": ["batch", 3, size, size], "depth": ["batch", 3, size, size]},
        "outputs": {"scores": ["batch"], "maps": ["batch", size, size]},
        "opset": OPSET,
        "preprocessing": PreprocessConfig(image_size=size).to_dict(),
        "threshold": {"value": threshold, "method": "fixed", "target_false_reject_rate": 0.0, "n_parts": 0},
        "score_stats": {
            "n": 8,
            "mean": 0.5,
            "std": 0.01,
            "min": 0.48,
            "max": 0.53,
            "p50": 0.5,
            "p95": 0.52,
            "p99": 0.53,
        },
        "metrics": {},
        "selection": "last epoch",
        "training": {},
        **fields,
    }
    return Manifest.model_validate(data)


def write_fake_model(
    models_dir: Path, name: str = "fake", graph: onnx.ModelProto | None = None, **manifest_kwargs: Any
) -> Path:
    """Write `<models_dir>/<name>/model.onnx` (manifest embedded) + `manifest.json`; return the folder.
    `graph`: another graph with the same inputs and outputs (default: `build_graph`)."""
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = fake_manifest(name, **manifest_kwargs)
    model = build_graph(manifest.image_size) if graph is None else graph
    helper.set_model_props(model, manifest_to_metadata(manifest))
    onnx.save(model, str(folder / MODEL_FILE))
    write_manifest_json(manifest, folder, sha256_file(folder / MODEL_FILE))
    return folder
