"""training.export.onnx_scrub: exported models without the build machine's paths, outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from training.export.onnx_scrub import (
    ScrubError,
    absolute_paths_in,
    find_absolute_paths,
    portable_settings,
    strip_build_paths,
)

TRACE = 'File "/home/builder/checkout/training/model/bridgenet.py", line 185, in forward\n    fused = self.fuse(x)'


def tiny_model(manifest: str = '{"training": {"data": "demo-data"}}') -> onnx.ModelProto:
    """y = x · w + b with an exporter-style stack trace and doc string on each node."""
    matmul = helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul", doc_string=TRACE)
    add = helper.make_node("Add", ["xw", "b"], ["y"], name="add")
    for node in (matmul, add):
        helper.set_metadata_props(
            node, {"pkg.torch.onnx.stack_trace": TRACE, "namespace": f": {node.name}/{node.op_type}"}
        )
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [matmul, add],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            onnx.numpy_helper.from_array(rng.standard_normal((4, 3), dtype=np.float32), "w"),
            onnx.numpy_helper.from_array(rng.standard_normal(3, dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(model, {"bridgenet_manifest": manifest})
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_strip_removes_stack_traces_and_keeps_outputs_bit_for_bit() -> None:
    model = tiny_model()
    assert find_absolute_paths(model)  # the traces name /home/builder/...
    clean = strip_build_paths(model)
    assert find_absolute_paths(clean) == []
    assert find_absolute_paths(model), "the input model must not be modified"
    keys = {p.key for node in clean.graph.node for p in node.metadata_props}
    assert keys == {"namespace"}  # other exporter metadata stays
    assert all(not node.HasField("doc_string") for node in clean.graph.node)
    assert {p.key: p.value for p in clean.metadata_props} == {p.key: p.value for p in model.metadata_props}
    onnx.checker.check_model(clean)
    x = np.random.default_rng(1).standard_normal((5, 4), dtype=np.float32)
    assert np.array_equal(run(model, x), run(clean, x))
    assert list(clean.graph.initializer) == list(model.graph.initializer)


def test_strip_refuses_a_path_it_does_not_own() -> None:
    # An absolute data path in the embedded manifest is the exporter's mistake, not metadata to drop.
    model = tiny_model('{"training": {"data": "/srv/datasets/puck"}}')
    with pytest.raises(ScrubError, match="/srv/datasets/puck"):
        strip_build_paths(model)


def test_strip_cleans_a_real_torch_export(tmp_path: Path) -> None:
    """torch's dynamo exporter writes the stack traces this module exists for; none survive."""
    path = tmp_path / "linear.onnx"
    torch.manual_seed(0)
    program = torch.onnx.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), dynamo=True, verbose=False)
    assert program is not None
    program.save(str(path))
    exported = onnx.load(str(path))
    clean = strip_build_paths(exported)
    assert find_absolute_paths(clean) == []
    x = np.random.default_rng(2).standard_normal((1, 4), dtype=np.float32)
    cpu = ["CPUExecutionProvider"]
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=cpu) for m in (exported, clean)]
    name = sessions[0].get_inputs()[0].name
    before, after = (s.run(None, {name: x})[0] for s in sessions)
    assert np.array_equal(before, after)


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        ('File "/opt/build/model.py", line 3', ["/opt/build/model.py"]),
        ("data=C:\\Users\\me\\puck", ["C:\\Users\\me\\puck"]),
        ("see ~/data/puck and file:///mnt/a/b", ["~/data/puck", "/mnt/a/b"]),
        (": backbone.stem/conv2d, /v1, demo-data, aten.add.Tensor", []),
    ],
)
def test_absolute_paths_in(text: str, paths: list[str]) -> None:
    assert absolute_paths_in(text) == paths


def test_portable_settings_keeps_names_only() -> None:
    settings = {"data": "/srv/runs/out/demo-data", "textures": "C:\\dtd\\images", "backbone_weights": None, "seed": 0}
    out = portable_settings(settings)
    assert out == {"data": "demo-data", "textures": "images", "backbone_weights": None, "seed": 0}
    assert settings["data"] == "/srv/runs/out/demo-data"  # not modified
    assert json.dumps(out).count("/") == 0
