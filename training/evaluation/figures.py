"""Pictures of an evaluation: anomaly-map sheets (RGB | depth | map | ground truth) and score histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from service.preprocessing import PreprocessConfig


def denormalise(image: np.ndarray, preprocessing: PreprocessConfig) -> np.ndarray:
    """(3, S, S) model input, normalised with `preprocessing`'s mean/std → (S, S, 3) float in [0, 1] for display."""
    mean = np.asarray(preprocessing.mean, np.float32)[:, None, None]
    std = np.asarray(preprocessing.std, np.float32)[:, None, None]
    return np.clip(image * std + mean, 0, 1).transpose(1, 2, 0)


def anomaly_sheet(
    path: Path,
    rgb: np.ndarray,
    depth: np.ndarray,
    amap: np.ndarray,
    gt: np.ndarray,
    *,
    preprocessing: PreprocessConfig,
    title: str,
    threshold: float | None = None,
) -> None:
    """One part: `rgb`, `depth` (3, S, S) normalised with `preprocessing`, `amap` (S, S) scores in [0, 1],
    `gt` (S, S) bool."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    axes[0].imshow(denormalise(rgb, preprocessing))
    axes[0].set_title("RGB")
    axes[1].imshow(denormalise(depth, preprocessing)[..., 0], cmap="gray")
    axes[1].set_title("depth")
    im = axes[2].imshow(amap, cmap="jet", vmin=0.0, vmax=1.0)
    if threshold is not None and amap.max() > threshold:
        axes[2].contour(amap > threshold, levels=[0.5], colors="white", linewidths=0.8)
    axes[2].set_title(f"anomaly map (max {amap.max():.3f})")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[3].imshow(gt, cmap="gray", vmin=0, vmax=1)
    axes[3].set_title("ground truth")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def score_histogram(
    path: Path,
    scores: np.ndarray,
    defects: Sequence[str],
    *,
    threshold: float | None,
    title: str,
) -> None:
    """Image scores of good parts vs each defect type, with the calibrated threshold."""
    defects_arr = np.asarray(defects)
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(min(scores.min(), threshold or 1.0), max(scores.max(), threshold or 0.0), 40).tolist()
    for name in ["good", *sorted(set(defects) - {"good"})]:
        sel = defects_arr == name
        if sel.any():
            ax.hist(scores[sel], bins=bins, alpha=0.55, label=f"{name} ({sel.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="image score (max patch score)", ylabel="parts", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
