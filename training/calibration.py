"""Threshold calibration on good validation parts: the verdict is NG iff score > threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.config import TrainConfig
from training.inference import predict
from training.metrics import threshold_for_false_reject_rate
from training.prepared import PreparedSplit

CALIBRATION_METHOD = "validation_good_false_reject_rate"


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Summary of good parts' scores: stored in the manifest so drift can be spotted in production."""
    s = np.asarray(scores, dtype=np.float64)
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
        "p50": float(np.percentile(s, 50)),
        "p95": float(np.percentile(s, 95)),
        "p99": float(np.percentile(s, 99)),
    }


def calibrate(
    model: torch.nn.Module, validation: PreparedSplit, config: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """Threshold for the target false-reject rate on the good validation parts (never the test split)."""
    good = ~validation.labels
    if not good.any():
        raise ValueError("no good parts in the validation data: cannot calibrate a threshold")
    scores, _ = predict(
        model, validation.rgb[good], validation.depth[good], batch_size=config.batch_size * 2, device=device
    )
    threshold = threshold_for_false_reject_rate(scores, config.target_false_reject_rate)
    return {
        "threshold": float(threshold),
        "method": CALIBRATION_METHOD,
        "target_false_reject_rate": config.target_false_reject_rate,
        "n_parts": int(good.sum()),
        "score_stats": score_stats(scores),
        "note": "few good parts make the 1% quantile the maximum good score; more validation parts "
        "give a better estimate"
        if good.sum() < 100
        else "",
    }
