"""Human-readable outputs of a training run: the loss curves and a short markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from training.config import TrainConfig
from training.evaluation.formatting import fmt

LOSS_KEYS = ("total", "bce_input", "bce_features", "bce_adapted", "focal")


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss per epoch (left) and validation AUROCs (right), as PNG."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSS_KEYS:
        if key in history[0]:
            ax_loss.plot(epochs, [row.get(key) for row in history], label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training losses")
    ax_loss.axhline(2 * 0.6931, color="grey", lw=0.8, ls=":", label="BCE pair at chance (2 ln 2)")
    ax_loss.legend(fontsize=8)
    for key in ("val_image_auroc", "val_pixel_auroc"):
        pts = [(row["epoch"], row[key]) for row in history if key in row]
        if pts:
            ax_val.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax_val.set(xlabel="epoch", ylabel="AUROC", title="validation (good + synthetic anomalies)", ylim=(0, 1.02))
    if ax_val.lines:
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "last epoch taken: no validation curve", ha="center", transform=ax_val.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_train_report(out: Path, config: TrainConfig, report: dict[str, Any], history: list[dict[str, Any]]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    sel = report["selection"]
    cal = report["calibration"]
    lines = [
        f"# Training run: {config.category}",
        "",
        f"- backbone `{config.backbone}`, image {config.image_size} px, modality {config.modality}, "
        f"{config.epochs} epochs, batch {config.batch_size}, seed {config.seed}",
        f"- MGAG input/features/adapted: {config.mgag_input}/{config.mgag_features}/{config.mgag_adapted} "
        f"(σ {config.sigma_input}/{config.sigma_features}/{config.sigma_adapted}); UTAG: {config.utag} "
        f"(depth anomalies: {config.utag_depth})",
        f"- training parts: {report['n_train_parts']} ({report['n_train_items_per_epoch']} items per epoch"
        + (", a fresh random subset each epoch" if report.get("samples_per_epoch") else "")
        + f"); validation parts: {report['n_validation_parts']} ({sel['validation_source']})",
        f"- **model selection**: {sel['method']}, epoch {sel['epoch']} — {sel['criterion']}",
        f"- **threshold** {cal['threshold']:.5f} ({cal['method']}, target false-reject rate "
        f"{cal['target_false_reject_rate']:.2%}, {cal['n_parts']} good parts)" + _expected(cal),
        f"- wall time {report['train_seconds']:.0f} s",
        "",
        "![losses](losses.png)",
        "",
        "| epoch | " + " | ".join(k for k in history[0] if k != "epoch") + " |" if history else "",
    ]
    if history:
        keys = [k for k in history[0] if k != "epoch"]
        lines.append("|" + "---|" * (len(keys) + 1))
        for row in history:
            lines.append(f"| {row['epoch']} | " + " | ".join(fmt(row.get(k)) for k in keys) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _expected(cal: dict[str, Any]) -> str:
    """The calibration's expectation on unseen good parts (absent from runs calibrated before it existed)."""
    if "expected_false_reject_rate" not in cal:
        return ""
    lo, hi = cal["false_reject_rate_interval"]
    return (
        f"; expected false-reject rate {cal['expected_false_reject_rate']:.2%} (90 % interval {lo:.2%}-{hi:.2%}); "
        f"pixel threshold {cal['pixel_threshold']:.5f}; the maximum good score was {cal['score_stats']['max']:.5f}"
    )
