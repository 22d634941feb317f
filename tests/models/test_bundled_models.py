"""Every model folder in the repository: no path of the machine that built it, and the service loads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest

from service.manifest import MANIFEST_FILE, MODEL_FILE, load_model_dir
from training.export.onnx_scrub import absolute_paths_in, find_absolute_paths

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL_DIRS = sorted(p.parent for p in MODELS.glob(f"*/{MODEL_FILE}"))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_the_demo_model_is_bundled() -> None:
    assert MODELS / "demo" in MODEL_DIRS


@pytest.mark.parametrize("folder", MODEL_DIRS, ids=lambda p: p.name)
def test_no_absolute_paths(folder: Path) -> None:
    model = onnx.load(str(folder / MODEL_FILE))
    assert find_absolute_paths(model) == []
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert [p for s in strings(manifest) for p in absolute_paths_in(s)] == []


@pytest.mark.parametrize("folder", MODEL_DIRS, ids=lambda p: p.name)
def test_the_service_verifies_it(folder: Path) -> None:
    """sha256, embedded manifest = manifest.json, preprocessing version: what the service checks at start."""
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    manifest = load_model_dir(folder, session.get_modelmeta().custom_metadata_map)
    assert manifest.name == folder.name
