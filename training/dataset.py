"""Preprocessed splits held in memory, and the torch Dataset that adds texture anomalies per sample."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from service.preprocessing import PreprocessConfig, preprocess_part
from training.anomalies.texture_anomaly import TextureAnomaly, texture_anomaly
from training.config import DepthAnomaly, TrainConfig
from training.data import Sample, discover, load_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSplit:
    """One split, preprocessed once (the reference redoes the point-cloud work every epoch).

    `rgb`, `depth`: (N, 3, S, S) float32, ImageNet-normalised model inputs.
    `foreground`: (N, S, S) bool. `gt`: (N, S, S) bool, the ground truth resized to the model grid.
    """

    samples: list[Sample]
    rgb: np.ndarray
    depth: np.ndarray
    foreground: np.ndarray
    gt: np.ndarray
    info: list[dict]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.is_anomalous for s in self.samples], dtype=bool)

    @property
    def defects(self) -> list[str]:
        return [s.defect for s in self.samples]

    def subset(self, indices: Sequence[int]) -> PreparedSplit:
        idx = list(indices)
        return PreparedSplit(
            samples=[self.samples[i] for i in idx],
            rgb=self.rgb[idx],
            depth=self.depth[idx],
            foreground=self.foreground[idx],
            gt=self.gt[idx],
            info=[self.info[i] for i in idx],
        )


def resize_gt(gt: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool → (S, S) bool: area-weighted, so a pixel is defective when most of it was.

    Thin defects that would vanish under that rule keep every touched pixel instead, so a defective part
    never ends up with an empty mask.
    """
    area = cv2.resize(gt.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    mask = area >= 0.5
    if gt.any() and not mask.any():
        mask = area > 0
    return mask


def prepare_split(
    root: Path,
    category: str,
    split: str,
    config: PreprocessConfig,
    *,
    progress: bool = True,
) -> PreparedSplit:
    """Read and preprocess every part of one split. Raises the data layer's errors, naming the file."""
    samples = discover(root, category, split)
    if not samples:
        raise ValueError(f"no parts in {root}/{category}/{split}")
    size = config.image_size
    n = len(samples)
    rgb = np.empty((n, 3, size, size), np.float32)
    depth = np.empty((n, 3, size, size), np.float32)
    foreground = np.empty((n, size, size), bool)
    gt = np.zeros((n, size, size), bool)
    info: list[dict] = []
    for i, sample in enumerate(tqdm(samples, desc=f"preprocess {split}", disable=not progress, unit="part")):
        part = load_sample(sample)
        if part.xyz is None:
            raise ValueError(f"{sample.rgb_path}: no point cloud; training needs xyz for every part")
        try:
            pre = preprocess_part(part.rgb, part.xyz, config)
        except ValueError as exc:
            raise ValueError(f"{sample.xyz_path}: {exc}") from exc
        rgb[i], depth[i], foreground[i] = pre.rgb, pre.depth, pre.foreground
        gt[i] = resize_gt(part.gt, size)
        info.append(pre.info)
    return PreparedSplit(samples, rgb, depth, foreground, gt, info)


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
