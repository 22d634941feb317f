"""A split read and preprocessed once: the model inputs, masks and facts of every part (no torch here, so
evaluating an exported model through the service's engine does not import it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from service.preprocessing import PreprocessConfig, preprocess_part
from training.data.layout import Sample, discover, load_sample


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
