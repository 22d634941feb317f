"""Preprocessed splits held in memory, and the torch Dataset that adds texture anomalies per sample."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from training.anomalies.texture_anomaly import TextureAnomaly, texture_anomaly
from training.config import DepthAnomaly, TrainConfig
from training.data.prepared import PreparedSplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalyOptions:
    """How a run's UTAG texture anomalies are made, for the training items and the validation set alike.

    `grid`: the discriminator's patch grid (h, w). `seed`: the run's seed. `modalities`: the model's inputs.
    The others as `texture_anomaly` takes them.
    """

    grid: tuple[int, int]
    seed: int
    modalities: tuple[str, ...]
    beta_mean: float = 0.5
    beta_std: float = 0.3
    alpha: float = 1.0 / 3.0
    depth_anomaly: DepthAnomaly = "texture"

    @classmethod
    def from_config(cls, config: TrainConfig) -> AnomalyOptions:
        return cls(
            grid=(config.image_size // 8, config.image_size // 8),
            seed=config.seed,
            modalities=config.modalities,
            beta_mean=config.beta_mean,
            beta_std=config.beta_std,
            alpha=config.alpha,
            depth_anomaly=config.utag_depth,
        )

    def make(
        self, split: PreparedSplit, i: int, textures: Sequence[np.ndarray], rng: np.random.Generator
    ) -> TextureAnomaly:
        """A texture anomaly on part `i` of `split`, drawn from `rng`, with every option of this set."""
        return texture_anomaly(
            split.rgb[i],
            split.depth[i],
            split.foreground[i],
            textures,
            rng,
            grid=self.grid,
            beta_mean=self.beta_mean,
            beta_std=self.beta_std,
            alpha=self.alpha,
            modalities=self.modalities,
            depth_anomaly=self.depth_anomaly,
        )


class TextureAnomalySet(Dataset):
    """Training items: the clean part plus (with `utag`) a UTAG texture anomaly made from it.

    Each item's randomness comes from (seed, epoch, index), so a run is reproducible whatever the loader
    order, and a resumed run makes the same anomalies as an uninterrupted one.
    """

    def __init__(
        self,
        split: PreparedSplit,
        indices: Sequence[int],
        textures: Sequence[np.ndarray],
        options: AnomalyOptions,
        *,
        utag: bool = True,
    ) -> None:
        self.split = split
        self.indices = list(indices)
        self.textures = textures
        self.options = options
        self.utag = utag
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i = self.indices[item]
        out = {"rgb": torch.from_numpy(self.split.rgb[i]), "depth": torch.from_numpy(self.split.depth[i])}
        if self.utag:
            rng = np.random.default_rng((self.options.seed, self.epoch, item))
            anomaly = self.options.make(self.split, i, self.textures, rng)
            out["aug_rgb"] = torch.from_numpy(np.ascontiguousarray(anomaly.rgb, dtype=np.float32))
            out["aug_depth"] = torch.from_numpy(np.ascontiguousarray(anomaly.depth, dtype=np.float32))
            out["patch_mask"] = torch.from_numpy(np.ascontiguousarray(anomaly.patch_mask, dtype=np.float32))
        return out


class ValidationSet(NamedTuple):
    """Model inputs with labels: `rgb`, `depth` (N, 3, S, S) float32, `labels` (N,) bool, `masks` (N, S, S) bool."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def synthetic_validation(
    split: PreparedSplit, textures: Sequence[np.ndarray], options: AnomalyOptions
) -> ValidationSet:
    """Good validation parts plus one texture-anomalous copy of each, made once with a fixed seed.

    2N items: the N good parts first. Used to select the checkpoint without ever looking at the test split.
    """
    n = len(split)
    size = split.rgb.shape[-1]
    anomalies = [options.make(split, i, textures, np.random.default_rng((options.seed, 10_007, i))) for i in range(n)]
    return ValidationSet(
        rgb=np.concatenate([split.rgb, np.stack([a.rgb for a in anomalies])]).astype(np.float32),
        depth=np.concatenate([split.depth, np.stack([a.depth for a in anomalies])]).astype(np.float32),
        labels=np.concatenate([np.zeros(n, bool), np.ones(n, bool)]),
        masks=np.concatenate([np.zeros((n, size, size), bool), np.stack([a.mask for a in anomalies])]),
    )
