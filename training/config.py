"""The frozen training configuration that is saved with every checkpoint and run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from service.lifecycle.rate import check_false_reject_rate
from service.preprocessing import PreprocessConfig

Modality = Literal["rgb", "depth", "both"]
Selection = Literal["validation", "last"]
# What UTAG puts into the depth image (training.anomalies.texture_anomaly): the paper's texture, our smooth
# dent/bump, or either per sample.
DepthAnomaly = Literal["texture", "smooth", "mixed"]
DEPTH_ANOMALIES: tuple[str, ...] = get_args(DepthAnomaly)

MODALITIES: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb",),
    "depth": ("depth",),
    "both": ("rgb", "depth"),
}


# Input-level Gaussian noise (MGAG's G1) per backbone, where it differs from the paper's "on". With
# EfficientNet-Lite0 it is harmful: on the synthetic puck set G1 alone gives I-AUROC 0.70 / AUPRO 0.66,
# the full MGAG 0.73 / 0.74, MGAG without G1 0.95 / 0.98 (docs/RESULTS.md, "MGAG level by level"): the
# discriminator learns to spot pixel noise, which real defects do not look like.
MGAG_INPUT_DEFAULTS: dict[str, bool] = {"tf_efficientnet_lite0": False}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's numbers. Saved as `config.json` in the run folder."""

    data: str
    category: str
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str | None = None
    image_size: int = 256
    feature_dim: int | None = None  # per modality; None → the backbone's default (256 lite0, 1536 WRN)
    modality: Modality = "both"
    # 30: on the synthetic puck set the defaults reach I-AUROC 0.97 at 30 epochs (two seeds, 8-11 minutes
    # on 2 CPU cores); with 20 epochs and texture-only depth anomalies it was 0.947 (docs/RESULTS.md).
    epochs: int = 30
    batch_size: int = 4
    seed: int = 0
    # docs/METHOD.md#optimisers: Adam for the adaptor, AdamW (default weight decay) for the discriminator.
    lr_adaptor: float = 5e-5
    lr_discriminator: float = 1e-4
    weight_decay_adaptor: float = 1e-5
    weight_decay_discriminator: float = 0.01
    # MGAG: σ at the input images, the per-modality features, and the adaptor output (reference Table 7).
    # `mgag_input` None = the backbone's default (MGAG_INPUT_DEFAULTS), resolved when the config is made.
    mgag_input: bool | None = None
    mgag_features: bool = True
    mgag_adapted: bool = True
    sigma_input: float = 0.12
    sigma_features: float = 0.04
    sigma_adapted: float = 0.02
    alpha: float = 1 / 3
    # UTAG: texture anomalies; DTD `images/` folder or the bundled fallback set when None.
    utag: bool = True
    # What UTAG puts into the depth image: the paper's gray texture ("texture"), our smooth dent/bump
    # extension ("smooth"), or either per sample ("mixed", the default: with textures alone, depth-only
    # dents on the toy-brick set scored at chance, I-AUROC 0.47; mixed: 0.77, and the synthetic puck set
    # went from 0.963 to 0.975; docs/RESULTS.md). See training.anomalies.texture_anomaly.
    utag_depth: DepthAnomaly = "mixed"
    textures: str | None = None
    beta_mean: float = 0.5
    beta_std: float = 0.3
    # Few-shot: K training parts, each replicated `shot_repeats` times per epoch (paper appendix B: 200).
    shots: int | None = None
    shot_repeats: int = 200
    # A fresh random subset of this many training parts each epoch (the paper: 400 of Eyecandies' 1000,
    # docs/RESULTS.md#eyecandies-paper-41-tables-4-15-16);
    # None = every part every epoch. See training.data.epoch_sampling.
    samples_per_epoch: int | None = None
    selection: Selection = "validation"
    eval_every: int = 1
    target_false_reject_rate: float = 0.01
    device: str = "cpu"
    # What the model's inputs are made with; it travels into the exported manifest. None: the defaults at
    # `image_size`. Its `image_size` is the run's `image_size` (checked): one setting, not two.
    preprocessing: PreprocessConfig = None  # type: ignore[assignment]  # filled in by __post_init__

    def __post_init__(self) -> None:
        # Frozen: the two places the config fills in defaults itself.
        if self.mgag_input is None:
            object.__setattr__(self, "mgag_input", MGAG_INPUT_DEFAULTS.get(self.backbone, True))
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", PreprocessConfig(image_size=self.image_size))
        try:
            check_false_reject_rate(self.target_false_reject_rate)
        except ValueError as exc:
            raise ValueError(f"TrainConfig: {exc}") from None
        if not isinstance(self.preprocessing, PreprocessConfig):
            raise TypeError(f"TrainConfig.preprocessing must be a PreprocessConfig, got {type(self.preprocessing)}")
        if self.preprocessing.image_size != self.image_size:
            raise ValueError(
                f"TrainConfig: preprocessing.image_size {self.preprocessing.image_size} differs from "
                f"image_size {self.image_size}"
            )

    @property
    def modalities(self) -> tuple[str, ...]:
        return MODALITIES[self.modality]

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        checks = [
            (
                self.image_size >= 32 and self.image_size % 16 == 0,
                "image_size must be a multiple of 16, ≥ 32",
            ),
            (self.epochs >= 1, "epochs must be ≥ 1"),
            (self.batch_size >= 1, "batch_size must be ≥ 1"),
            (self.modality in MODALITIES, f"modality must be one of {sorted(MODALITIES)}"),
            (self.shots is None or self.shots >= 1, "shots must be ≥ 1"),
            (self.shot_repeats >= 1, "shot_repeats must be ≥ 1"),
            (self.samples_per_epoch is None or self.samples_per_epoch >= 1, "samples_per_epoch must be ≥ 1"),
            (self.shots is None or self.samples_per_epoch is None, "shots and samples_per_epoch do not combine"),
            (self.selection in ("validation", "last"), "selection must be 'validation' or 'last'"),
            (self.eval_every >= 1, "eval_every must be ≥ 1"),
            (
                min(self.sigma_input, self.sigma_features, self.sigma_adapted) >= 0,
                "noise σ must be ≥ 0",
            ),
            (self.lr_adaptor > 0 and self.lr_discriminator > 0, "learning rates must be > 0"),
            (self.utag_depth in DEPTH_ANOMALIES, f"utag_depth must be one of {DEPTH_ANOMALIES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message} (got {self})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `preprocessing` as `PreprocessConfig.to_dict()` (with its version), as config.json holds it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["preprocessing"] = self.preprocessing.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}: written by a newer version?")
        values = dict(data)
        # Raises ConfigError for another preprocessing version: a model must see what it was trained on.
        values["preprocessing"] = (
            PreprocessConfig.from_dict(values["preprocessing"]) if values.get("preprocessing") else None
        )
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is this a training run folder?")
        return cls.from_dict(json.loads(path.read_text()))
