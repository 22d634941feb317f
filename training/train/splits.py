"""The parts a run trains and calibrates on: train split, validation split (or a tenth held out of train)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.data.prepared import PreparedSplit, prepare_split

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: PreparedSplit
    validation: PreparedSplit
    validation_source: str  # "validation split" or "held out from train"
    train_indices: list[int]


def load_splits(config: TrainConfig, *, progress: bool) -> Splits:
    """Train and validation parts, preprocessed. Without a validation split, hold out a tenth of train."""
    pre = config.preprocessing
    root = Path(config.data)
    train = prepare_split(root, config.category, "train", pre, progress=progress)
    validation_dir = root / config.category / "validation"
    if validation_dir.is_dir() and any(validation_dir.iterdir()):
        validation = prepare_split(root, config.category, "validation", pre, progress=progress)
        source, train_pool = "validation split", list(range(len(train)))
    else:
        n_hold = max(1, len(train) // 10)
        if len(train) - n_hold < 1:
            raise ValueError(f"{len(train)} training part(s) and no validation split: need at least 2 parts")
        order = np.random.default_rng(config.seed).permutation(len(train)).tolist()
        validation = train.subset(sorted(order[:n_hold]))
        train_pool = sorted(order[n_hold:])
        source = "held out from train"
        log.warning("no validation split: holding out %d of %d training parts for calibration", n_hold, len(train))
    indices = train_pool
    if config.shots is not None:
        if config.shots > len(train_pool):
            raise ValueError(f"--shots {config.shots} but only {len(train_pool)} training parts")
        chosen = sorted(np.random.default_rng(config.seed + 1).choice(train_pool, config.shots, replace=False))
        indices = [int(i) for i in chosen] * config.shot_repeats
    if config.samples_per_epoch is not None and config.samples_per_epoch > len(indices):
        raise ValueError(f"--samples-per-epoch {config.samples_per_epoch} but only {len(indices)} training parts")
    return Splits(train, validation, source, indices)
