"""Torch-side benchmark models: BridgeNet with random weights, exported to a servable model folder.

Random weights time exactly like trained ones (same graph, same shapes), so WideResNet-50-2 can be timed
on machines without its ImageNet file. Exports are cached by backbone, size and width: a WRN-50-2 export
takes about 10 s and writes a 255 MB file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import onnx
import torch

from service.manifest import Manifest, manifest_to_metadata, sha256_file, write_manifest_json
from service.preprocessing import PREPROCESSING_VERSION, PreprocessConfig
from training.export.exporter import OPSET, export_onnx
from training.model.backbones import BACKBONES, build_backbone
from training.model.bridgenet import BridgeNet
from training.runs import load_run

log = logging.getLogger("benchmarks")

MODALITIES = {"rgb": ("rgb",), "depth": ("depth",), "both": ("rgb", "depth")}


def random_bridgenet(
    backbone: str, image_size: int, feature_dim: int, modality: str = "both", seed: int = 0
) -> BridgeNet:
    """BridgeNet on `backbone` with random weights everywhere (timing only), in eval mode."""
    torch.manual_seed(seed)
    net = BridgeNet(
        build_backbone(backbone, pretrained=False),
        feature_dim=feature_dim,
        modalities=MODALITIES[modality],
        image_size=image_size,
    )
    return net.eval()


def benchmark_manifest(name: str, backbone: str, image_size: int, feature_dim: int) -> Manifest:
    """A valid manifest for a random-weight model: the service loads it like any export."""
    s = image_size
    data: dict[str, Any] = {
        "name": name,
        "version": "bench",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": None,
        "category": "benchmark",
        "modality": "both",
        "backbone": backbone,
        "image_size": s,
        "feature_dim": feature_dim,
        "inputs": {"rgb": ["batch", 3, s, s], "depth": ["batch", 3, s, s]},
        "outputs": {"scores": ["batch"], "maps": ["batch", s, s]},
        "opset": OPSET,
        "preprocessing": PreprocessConfig(image_size=s).to_dict(),
        # Random weights: the threshold is meaningless; 0.5 keeps the verdict code path exercised.
        "threshold": {"value": 0.5, "method": "benchmark_fixed", "target_false_reject_rate": None, "n_parts": 0},
        "score_stats": {"n": 1, "mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "p50": 0.5, "p95": 0.5, "p99": 0.5},
        "metrics": {},
        "selection": "random weights (benchmark)",
        "training": {},
    }
    return Manifest.model_validate(data)


def export_model_dir(net: BridgeNet, folder: Path, name: str, backbone: str) -> Path:
    """Export `net` to `folder/model.onnx` with the manifest embedded, plus `manifest.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = benchmark_manifest(name, backbone, net.image_size, net.feature_dim)
    onnx_path = folder / "model.onnx"
    export_onnx(net, onnx_path, net.image_size)
    proto = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(proto, manifest_to_metadata(manifest))
    onnx.save(proto, str(onnx_path))
    write_manifest_json(manifest, folder, sha256_file(onnx_path))
    return folder


def _servable(folder: Path) -> bool:
    """Whether a cached export is complete and made with today's preprocessing version."""
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (folder / "model.onnx").is_file() and data.get("preprocessing", {}).get("version") == PREPROCESSING_VERSION


def cached_model_dir(cache_dir: Path, backbone: str, image_size: int, feature_dim: int | None = None) -> Path:
    """`cache_dir/<name>/` holding a random-weight export of `backbone` at `image_size`; built if absent."""
    width = feature_dim or BACKBONES[backbone].feature_dim
    name = f"{backbone.replace('_', '-')}-{image_size}-w{width}"
    folder = cache_dir / name
    if _servable(folder):
        log.info("using cached export %s", folder)
        return folder
    log.info("exporting %s at %d px (random weights) to %s", backbone, image_size, folder)
    export_model_dir(random_bridgenet(backbone, image_size, width), folder, name, backbone)
    return folder


def torch_model_for(model_dir: Path, run_dir: Path | None) -> tuple[BridgeNet | None, str]:
    """The PyTorch twin of an exported model for eager timing, and where it came from.

    With `run_dir`: the run's own weights. Without: the manifest's architecture with random weights
    (same graph and shapes, so the same time). None when the manifest names a backbone we cannot build.
    """
    if run_dir is not None:
        return load_run(run_dir).model.eval(), f"run {run_dir}"
    manifest = Manifest.model_validate(
        {k: v for k, v in json.loads((model_dir / "manifest.json").read_text()).items() if k != "onnx_sha256"}
    )
    if manifest.backbone not in BACKBONES:
        return None, f"backbone {manifest.backbone!r} is not a training backbone; no PyTorch twin"
    net = random_bridgenet(manifest.backbone, manifest.image_size, manifest.feature_dim, manifest.modality)
    return net, "manifest architecture, random weights"
