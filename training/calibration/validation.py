"""Threshold calibration on good validation parts: the verdict is NG iff score > threshold.

The numerical methods live in `service.lifecycle.thresholds` (numpy/scipy, no torch), shared with
`python -m training calibrate`, which re-calibrates an exported model on good parts from the line.
"""

from __future__ import annotations

import torch

from service.lifecycle.calibration import Calibration
from service.lifecycle.thresholds import calibrate_scores
from training.config import TrainConfig
from training.data.prepared import PreparedSplit
from training.scoring.torch_model import score_with_torch

__all__ = ["calibrate"]


def calibrate(
    model: torch.nn.Module, validation: PreparedSplit, config: TrainConfig, device: torch.device
) -> Calibration:
    """Image and pixel thresholds for the target false-reject rate on the good validation parts (never the
    test split), for the run's `calibration.json`."""
    good = ~validation.labels
    if not good.any():
        raise ValueError("no good parts in the validation data: cannot calibrate a threshold")
    scores, maps = score_with_torch(
        model, validation.rgb[good], validation.depth[good], batch_size=config.batch_size * 2, device=device
    )
    return calibrate_scores(
        scores, maps, rate=config.target_false_reject_rate, source=f"{int(good.sum())} good validation parts"
    )
