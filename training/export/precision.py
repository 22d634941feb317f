"""Reduced-precision variants of an exported fp32 graph, and the check that they still give the same answers.

- int8: ONNX Runtime static quantisation in QDQ form. Activations are calibrated (percentile) on good training
  parts run through the shared preprocessing, the same inputs the service feeds the model. Only the
  compute-bound operators (Conv, Gemm, MatMul) are quantised: quantising the cheap ones between them too (Add,
  Mul, Concat, Resize, Slice, Transpose, Reshape, LeakyRelu) was measured to save no CPU time and to move the
  map more. The score head stays float: the discriminator's last linear layer, its
  sigmoid and everything after it (the max over the map, the upsampling, the fixed Gaussian smoothing), found
  as "the last Gemm of the graph and every node after it". That part costs almost nothing and it is where a
  quantisation step would move the score directly. The backbone's first twelve convolutions stay float too
  (on EfficientNet-Lite0: everything at 1/2 and 1/4 of the input size and the block that takes it to 1/8).
  The discriminator is trained to call feature noise anomalous, so quantisation noise made early and carried
  through the backbone raises the whole map; keeping these convolutions float cuts the map's difference to
  fp32 by 4-8× and costs little CPU time, because int8 pays little on such narrow convolutions
  (docs/BENCHMARKS.md, "int8", second round).
- fp16: every float tensor in half precision for the CUDA provider, inputs and outputs kept float32 so the
  service feeds it as any other model.

`compare` runs the candidate beside the fp32 graph on the same parts; the exporter refuses a candidate whose
scores move more than the precision's tolerance or whose verdict differs on any validation part.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from training.scoring.engine import score_with_session

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
QUANTISED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Tolerance:
    """How far a reduced-precision model may move from fp32: the largest |score difference| and the mean
    |map difference| over the checked parts; verdicts must be identical in every case."""

    score: float
    map_mean: float


# Scores are sigmoid outputs in [0, 1]. fp32 is the PyTorch parity bound of training/export/exporter.py.
TOLERANCES: dict[Precision, Tolerance] = {
    "fp32": Tolerance(score=1e-4, map_mean=1e-4),
    "fp16": Tolerance(score=5e-3, map_mean=2e-3),
    # int8: the score is the maximum over the map, so it collects the largest local error; on the demo run
    # (Lite0, 256 px) the largest score difference over the validation parts is 0.017 and the mean map
    # difference 0.0045 (0.073 and 0.037 with the first round's 2 float convolutions; docs/BENCHMARKS.md,
    # "int8"): these bounds are guard rails against a broken quantisation; the accuracy itself is measured
    # with `evaluate --model` on the test split.
    "int8": Tolerance(score=0.1, map_mean=0.05),
}


@dataclass(frozen=True)
class Int8Options:
    per_channel: bool = True  # weights scaled per output channel (measured: see docs/BENCHMARKS.md, "int8")
    float_head: bool = True  # the score head (last Gemm onwards) stays float
    # The graph's first convolutions that stay float. Chosen on the validation parts (good parts and synthetic
    # anomalies, never the test split) of two runs (puck, brick), sweeping 2-18: mean |map difference| to fp32
    # 0.037 → 0.0047 (puck) and 0.016 → 0.0037 (brick) going from 2 to 12, no better beyond 12; CPU time per
    # part 10.9 ms against 10.8 ms with 2 (fp32: 18.5 ms; one thread). docs/BENCHMARKS.md, "int8".
    float_stem_convs: int = 12
    max_calibration_parts: int = 32
    # Activation ranges: "percentile" (the 0.01-99.99 % range of a histogram over the calibration parts)
    # or "minmax". Measured on the demo run: the percentile ranges halve the largest score difference.
    calibration: Literal["percentile", "minmax"] = "percentile"


class PrecisionError(RuntimeError):
    """A reduced-precision model could not be made, or disagrees with fp32 beyond its tolerance."""


def stem_nodes(model: onnx.ModelProto, n: int) -> list[str]:
    """Names of the first `n` Conv nodes in graph (topological) order: the backbone's first layers."""
    return [node.name for node in model.graph.node if node.op_type == "Conv" and node.name][:n]


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the last Gemm/MatMul node and every node after it (graph order is topological)."""
    nodes = list(model.graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=None)
    if last is None:
        return []
    return [n.name for n in nodes[last:] if n.name]


def quantised_op_counts(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Per operator type, how many nodes read int8 (fed by a DequantizeLinear) and how many stay float."""
    dequantised = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    counts: dict[str, dict[str, int]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind = "int8" if any(i in dequantised for i in node.input) else "float"
        counts.setdefault(node.op_type, {"int8": 0, "float": 0})[kind] += 1
    return counts


class _Calibration(CalibrationDataReader):
    """onnxruntime.quantization's data reader over preprocessed parts, one part per call."""

    def __init__(self, rgb: np.ndarray, depth: np.ndarray) -> None:
        self._parts: Iterator[dict[str, np.ndarray]] = iter(
            {"rgb": rgb[i : i + 1], "depth": depth[i : i + 1]} for i in range(len(rgb))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._parts, None)


def quantise_int8(
    fp32_path: Path, out_path: Path, rgb: np.ndarray, depth: np.ndarray, options: Int8Options
) -> dict[str, Any]:
    """Static QDQ int8 model of `fp32_path` calibrated on (rgb, depth); returns what was done, for the manifest."""
    n = min(len(rgb), options.max_calibration_parts)
    if n < 1:
        raise PrecisionError("int8 calibration needs at least one part")
    with tempfile.TemporaryDirectory(prefix="quantise-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and ONNX Runtime's own graph fusions first, so the QDQ pairs land where the
        # optimised graph has its operators.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        excluded = stem_nodes(graph, options.float_stem_convs) + (head_nodes(graph) if options.float_head else [])
        quantisable = [n for n in graph.graph.node if n.op_type in QUANTISED_OPS and n.name not in excluded]
        # Percentile ranges come from histograms of the quantised tensors; with none (a graph without
        # convolutions or matrix products, e.g. a test model) ONNX Runtime has nothing to histogram.
        calibration = options.calibration if quantisable else "minmax"
        quantize_static(
            str(prepared),
            str(out_path),
            _Calibration(rgb[:n], depth[:n]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISED_OPS),
            per_channel=options.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.Percentile if calibration == "percentile" else CalibrationMethod.MinMax,
            extra_options={"CalibPercentile": 99.99} if calibration == "percentile" else {},
        )
    counts = quantised_op_counts(onnx.load(str(out_path)))
    return {
        "method": f"onnxruntime static quantisation, QDQ, {calibration} calibration",
        "weights": "int8 per-channel" if options.per_channel else "int8 per-tensor",
        "activations": "uint8 per-tensor",
        "quantised_ops": list(QUANTISED_OPS),
        "float_nodes": excluded,
        "op_counts": counts,
        "calibration_parts": n,
    }


def convert_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """Half-precision weights and activations, float32 inputs and outputs (for the CUDA provider)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    sort_topologically(half.graph)  # the converter appends the input casts after their readers
    onnx.save(half, str(out_path))
    return {"method": "onnxruntime.transformers.float16, inputs and outputs kept float32"}


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (ONNX requires it)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise PrecisionError(f"the graph has a cycle or a missing input near {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def compare(
    reference: ort.InferenceSession,
    candidate: ort.InferenceSession,
    rgb: np.ndarray,
    depth: np.ndarray,
    thresholds: tuple[float, float],
) -> dict[str, Any]:
    """The candidate's scores, maps and verdicts against the reference's on the same parts.

    `thresholds`: (reference's, candidate's). Each model is judged at its own calibrated threshold: with few
    validation parts the threshold is the highest good score, so a part sits exactly on it and any shift
    of its score, however small, would otherwise count as a changed verdict."""
    ref_scores, ref_maps = score_with_session(reference, rgb, depth)
    scores, maps = score_with_session(candidate, rgb, depth)
    flips = np.flatnonzero((ref_scores > thresholds[0]) != (scores > thresholds[1]))
    return {
        "n_parts": len(rgb),
        "score_max_abs_diff": float(np.abs(ref_scores - scores).max()),
        "map_mean_abs_diff": float(np.abs(ref_maps - maps).mean()),
        "map_max_abs_diff": float(np.abs(ref_maps - maps).max()),
        "verdict_flips": [int(i) for i in flips],
        "thresholds": {"fp32": thresholds[0], "candidate": thresholds[1]},
    }


def within(result: dict[str, Any], tolerance: Tolerance) -> bool:
    return (
        result["score_max_abs_diff"] <= tolerance.score
        and result["map_mean_abs_diff"] <= tolerance.map_mean
        and not result["verdict_flips"]
    )
