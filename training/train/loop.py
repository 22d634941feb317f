"""The training run: resume, the epoch loop, checkpoints, selection, calibration and the report."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import runs
from training.anomalies.textures import load_textures
from training.calibration.validation import calibrate
from training.config import TrainConfig
from training.data.dataset import AnomalyOptions, TextureAnomalySet, ValidationSet, synthetic_validation
from training.data.epoch_sampling import epoch_subset
from training.evaluation.metrics import image_auroc, pixel_auroc
from training.evaluation.report import plot_history, write_train_report
from training.model.bridgenet import BridgeNet
from training.scoring.torch_model import score_with_torch
from training.train.splits import Splits, load_splits
from training.train.step import Trainer

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the loop carries from epoch to epoch, and what a checkpoint restores."""

    history: list[dict[str, Any]]
    best: dict[str, Any]  # {"score", "epoch", "metrics"} of the selected epoch so far
    start: int  # first epoch still to run


def check_out_folder(config: TrainConfig, out: Path, *, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one with a different config (only `epochs` may change)."""
    if (out / runs.CHECKPOINT_FILE).exists() and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    if resume and (out / runs.CONFIG_FILE).exists():
        saved = TrainConfig.load(out / runs.CONFIG_FILE)
        # Only the epoch count may change on resume (to extend a run); anything else makes a different run.
        changed = sorted(k for k, v in config.to_dict().items() if k != "epochs" and saved.to_dict()[k] != v)
        if changed:
            raise ValueError(
                f"--resume with a different config than {out / runs.CONFIG_FILE}: {changed}; start a new run"
            )


def resume_progress(trainer: Trainer, out: Path, *, resume: bool) -> Progress:
    """The progress saved in the run's checkpoint (loaded into `trainer`), or a fresh start."""
    checkpoint_path = out / runs.CHECKPOINT_FILE
    if not (resume and checkpoint_path.exists()):
        return Progress(history=[], best={"score": -np.inf, "epoch": None}, start=1)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    trainer.load_state(state["trainer"])
    log.info("resuming %s after epoch %d", out, state["epoch"])
    return Progress(history=state["history"], best=state["best"], start=state["epoch"] + 1)


def validation_metrics(model: BridgeNet, val: ValidationSet, device: torch.device, batch_size: int) -> dict[str, float]:
    rgb, depth, labels, masks = val
    scores, maps = score_with_torch(model, rgb, depth, batch_size=batch_size, device=device)
    return {"val_image_auroc": image_auroc(labels, scores), "val_pixel_auroc": pixel_auroc(masks, maps)}


def run_epoch(trainer: Trainer, dataset: TextureAnomalySet, epoch: int, *, progress: bool) -> dict[str, Any]:
    """Train one epoch; returns the epoch's mean losses."""
    config = trainer.config
    trainer.model.train()
    dataset.set_epoch(epoch)
    trainer.start_epoch(epoch)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(config.seed * 7_919 + epoch),
    )
    sums: dict[str, float] = {}
    for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch"):
        for k, v in trainer.step(batch).items():
            sums[k] = sums.get(k, 0.0) + v
    return {"epoch": epoch, **{k: v / max(1, len(loader)) for k, v in sums.items()}}


def select(
    trainer: Trainer, val: ValidationSet, row: dict[str, Any], best: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Validation selection after an epoch: add the metrics to `row`; save the weights when the epoch is
    the best so far. Returns the best epoch's record."""
    config = trainer.config
    row.update(validation_metrics(trainer.model, val, trainer.device, config.batch_size * 2))
    score = row["val_image_auroc"] + row["val_pixel_auroc"]
    if score > best["score"]:  # strict: the earliest of equal epochs wins
        best = {"score": score, "epoch": row["epoch"], "metrics": dict(row)}
        save_weights(trainer.model, row["epoch"], out)
    return best


def save_weights(model: BridgeNet, epoch: int, out: Path) -> None:
    torch.save({"state": runs.trainable_state(model), "epoch": epoch}, out / runs.MODEL_FILE)


def save_checkpoint(trainer: Trainer, progress: Progress, epoch: int, out: Path) -> None:
    """history.csv and the resumable checkpoint after a finished epoch."""
    _write_history(out / runs.HISTORY_FILE, progress.history)
    checkpoint_path = out / runs.CHECKPOINT_FILE
    checkpoint_path.parent.mkdir(exist_ok=True)
    torch.save(
        {"trainer": trainer.state(), "history": progress.history, "best": progress.best, "epoch": epoch},
        checkpoint_path,
    )


def finish(trainer: Trainer, splits: Splits, progress: Progress, out: Path, t0: float) -> dict[str, Any]:
    """Load the selected weights, calibrate on the validation parts, write samples, plot and report."""
    config, model, history = trainer.config, trainer.model, progress.history
    best = progress.best
    if config.selection == "last":
        save_weights(model, config.epochs, out)
        best = {"score": None, "epoch": config.epochs, "metrics": history[-1] if history else {}}
    saved = torch.load(out / runs.MODEL_FILE, map_location="cpu", weights_only=True)
    runs.load_trainable_state(model, saved["state"])
    calibration = calibrate(model, splits.validation, config, trainer.device)
    (out / runs.CALIBRATION_FILE).write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    n_keep = min(4, len(splits.validation))
    np.savez_compressed(
        out / runs.SAMPLES_FILE, rgb=splits.validation.rgb[:n_keep], depth=splits.validation.depth[:n_keep]
    )
    plot_history(history, out / "losses.png")
    report = {
        "category": config.category,
        "selection": {
            "method": config.selection,
            "epoch": best["epoch"],
            "validation_source": splits.validation_source,
            "criterion": "validation I-AUROC + P-AUROC on good parts and synthetic texture anomalies made "
            "from them; the test split is never read while training"
            if config.selection == "validation"
            else "last epoch",
            "metrics": best.get("metrics", {}),
        },
        "n_train_parts": len(set(splits.train_indices)),
        "n_train_items_per_epoch": config.samples_per_epoch or len(splits.train_indices),
        "samples_per_epoch": config.samples_per_epoch,
        "n_validation_parts": len(splits.validation),
        "calibration": calibration.to_dict(),
        "train_seconds": time.perf_counter() - t0,
    }
    write_train_report(out, config, report, history)
    return report


def train(config: TrainConfig, out: Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, select, calibrate; write everything into `out`. Returns the run's report."""
    config.validate()
    out.mkdir(parents=True, exist_ok=True)
    check_out_folder(config, out, resume=resume)
    config.save(out / runs.CONFIG_FILE)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")

    t0 = time.perf_counter()
    splits = load_splits(config, progress=progress)
    textures = load_textures(Path(config.textures) if config.textures else None)
    torch.manual_seed(config.seed)  # the adaptor's and discriminator's initial weights
    model = runs.build_model(config).to(device)
    options = AnomalyOptions.from_config(config)
    dataset = TextureAnomalySet(splits.train, splits.train_indices, textures, options, utag=config.utag)
    val = synthetic_validation(splits.validation, textures, options)
    trainer = Trainer(model, config, device)
    state = resume_progress(trainer, out, resume=resume)

    epochs = tqdm(range(state.start, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        if config.samples_per_epoch is not None:  # a fresh subset each epoch (training.data.epoch_sampling)
            dataset.indices = epoch_subset(splits.train_indices, config.samples_per_epoch, config.seed, epoch)
        row = run_epoch(trainer, dataset, epoch, progress=progress)
        if config.selection == "validation" and (epoch % config.eval_every == 0 or epoch == config.epochs):
            state.best = select(trainer, val, row, state.best, out)
        row["seconds"] = time.perf_counter() - t_epoch
        state.history.append(row)
        save_checkpoint(trainer, state, epoch, out)
        epochs.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("total", "val_image_auroc")})
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 4) for k, v in row.items()}))
    return finish(trainer, splits, state, out, t0)


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
