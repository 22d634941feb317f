"""`python -m training train`: the BridgeNet training loop (MGAG + UTAG), checkpoints and calibration."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from service.preprocessing import PreprocessConfig
from training import runs
from training.calibration import calibrate
from training.config import DEPTH_ANOMALIES, TrainConfig
from training.dataset import PreparedSplit, TextureAnomalySet, prepare_split, synthetic_validation
from training.inference import predict
from training.losses import bce_pair, focal_loss
from training.metrics import image_auroc, pixel_auroc
from training.anomalies.mgag import Modality, add_noise, add_selective_noise, choose_modalities
from training.model import BridgeNet
from training.report import plot_history, write_train_report
from training.anomalies.textures import load_textures

log = logging.getLogger(__name__)

LOSS_NAMES = ("bce_input", "bce_features", "bce_adapted", "focal")


@dataclass
class Splits:
    train: PreparedSplit
    validation: PreparedSplit
    validation_source: str  # "validation split" or "held out from train"
    train_indices: list[int]


def load_splits(config: TrainConfig, *, progress: bool) -> Splits:
    """Train and validation parts, preprocessed. Without a validation split, hold out a tenth of train."""
    pre = PreprocessConfig.from_dict(config.preprocessing)
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
    return Splits(train, validation, source, indices)


class Trainer:
    """One training iteration as the reference (§4.1), with the backbone run once per batch."""

    def __init__(self, model: BridgeNet, config: TrainConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.opt_adaptor = torch.optim.Adam(
            model.adaptor.parameters(), lr=config.lr_adaptor, weight_decay=config.weight_decay_adaptor
        )
        self.opt_discriminator = torch.optim.AdamW(
            model.discriminator.parameters(),
            lr=config.lr_discriminator,
            weight_decay=config.weight_decay_discriminator,
        )
        # Noise is drawn where the tensors live (the reference draws ~135M samples per step on the CPU).
        self.generator = torch.Generator(device=device)
        self.rng = np.random.default_rng(config.seed)

    def start_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.config.seed * 1_000_003 + epoch)
        self.rng = np.random.default_rng((self.config.seed, epoch, 7))

    def _which(self) -> Modality:
        mods = self.config.modalities
        return choose_modalities(self.rng, self.config.alpha) if len(mods) == 2 else cast(Modality, mods[0])

    def _feature_noise(
        self, fr: torch.Tensor | None, fd: torch.Tensor | None, sigma: float
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """G2 on the per-modality features; a single-modality model has only one to perturb."""
        if fr is None or fd is None:
            return (
                None if fr is None else add_noise(fr, sigma, self.generator),
                None if fd is None else add_noise(fd, sigma, self.generator),
            )
        return add_selective_noise(fr, fd, sigma, self._which(), self.generator)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, model = self.config, self.model
        rgb = batch["rgb"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True)
        b = rgb.shape[0]
        images_r, images_d = [rgb], [depth]
        if cfg.mgag_input:  # G1: noise on the normalised input images, selected modality
            rn, dn = add_selective_noise(rgb, depth, cfg.sigma_input, self._which(), self.generator)
            images_r.insert(0, rn)
            images_d.insert(0, dn)
        if cfg.utag:
            images_r.insert(-1, batch["aug_rgb"].to(self.device))
            images_d.insert(-1, batch["aug_depth"].to(self.device))
        with torch.no_grad():  # the backbone is frozen: one pass over every variant of the batch
            fr, fd = model.embed(torch.cat(images_r), torch.cat(images_d))
        chunks_r = list(fr.split(b)) if fr is not None else [None] * len(images_r)
        chunks_d = list(fd.split(b)) if fd is not None else [None] * len(images_d)
        clean = model.adapt(model.fuse(chunks_r[-1], chunks_d[-1]))
        noisy: dict[str, torch.Tensor] = {}
        if cfg.mgag_input:
            noisy["bce_input"] = model.adapt(model.fuse(chunks_r[0], chunks_d[0]))
        if cfg.mgag_features:  # G2: noise on the per-modality features before the adaptor
            r2, d2 = self._feature_noise(chunks_r[-1], chunks_d[-1], cfg.sigma_features)
            noisy["bce_features"] = model.adapt(model.fuse(r2, d2))
        if cfg.mgag_adapted:  # G3: noise on the adaptor output, both halves
            noisy["bce_adapted"] = add_noise(clean, cfg.sigma_adapted, self.generator)

        losses: dict[str, torch.Tensor] = {}
        for name, features in noisy.items():
            # Clean and noisy go through D together, so BN sees both in one batch (reference §4.1).
            scores = model.discriminate(torch.cat([clean, features]))
            losses[name] = bce_pair(scores[:b], scores[b:])
        if cfg.utag:
            aug = model.adapt(model.fuse(chunks_r[-2], chunks_d[-2]))
            scores = model.discriminate(aug)
            losses["focal"] = focal_loss(scores.reshape(-1), batch["patch_mask"].to(self.device).reshape(-1))
        if not losses:
            raise ValueError("nothing to train: MGAG and UTAG are both switched off")
        total = torch.stack(list(losses.values())).sum()
        self.opt_adaptor.zero_grad(set_to_none=True)
        self.opt_discriminator.zero_grad(set_to_none=True)
        total.backward()
        self.opt_adaptor.step()
        self.opt_discriminator.step()
        out = {name: float(v.detach()) for name, v in losses.items()}
        out["total"] = float(total.detach())
        return out

    def state(self) -> dict[str, Any]:
        return {
            "model": runs.trainable_state(self.model),
            "opt_adaptor": self.opt_adaptor.state_dict(),
            "opt_discriminator": self.opt_discriminator.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        runs.load_trainable_state(self.model, state["model"])
        self.opt_adaptor.load_state_dict(state["opt_adaptor"])
        self.opt_discriminator.load_state_dict(state["opt_discriminator"])


def validation_metrics(model: BridgeNet, val: tuple, device: torch.device, batch_size: int) -> dict[str, float]:
    rgb, depth, labels, masks = val
    scores, maps = predict(model, rgb, depth, batch_size=batch_size, device=device)
    return {"val_image_auroc": image_auroc(labels, scores), "val_pixel_auroc": pixel_auroc(masks, maps)}


def train(config: TrainConfig, out: Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, select, calibrate; write everything into `out`. Returns the run's report."""
    config.validate()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / runs.CHECKPOINT_FILE
    if checkpoint_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    if resume and (out / runs.CONFIG_FILE).exists():
        saved = TrainConfig.load(out / runs.CONFIG_FILE)
        # Only the epoch count may change on resume (to extend a run); anything else makes a different run.
        changed = sorted(k for k, v in config.to_dict().items() if k != "epochs" and saved.to_dict()[k] != v)
        if changed:
            raise ValueError(
                f"--resume with a different config than {out / runs.CONFIG_FILE}: {changed}; start a new run"
            )
    config.save(out / runs.CONFIG_FILE)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")

    t0 = time.perf_counter()
    splits = load_splits(config, progress=progress)
    textures = load_textures(Path(config.textures) if config.textures else None)
    torch.manual_seed(config.seed)
    model = runs.build_model(config).to(device)
    grid = (config.image_size // 8, config.image_size // 8)
    dataset = TextureAnomalySet(
        splits.train,
        splits.train_indices,
        textures,
        grid=grid,
        seed=config.seed,
        utag=config.utag,
        modalities=config.modalities,
        beta_mean=config.beta_mean,
        beta_std=config.beta_std,
        alpha=config.alpha,
        depth_anomaly=config.utag_depth,
    )
    val = synthetic_validation(
        splits.validation,
        textures,
        seed=config.seed,
        modalities=config.modalities,
        alpha=config.alpha,
        depth_anomaly=config.utag_depth,
    )
    trainer = Trainer(model, config, device)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -np.inf, "epoch": None}
    start = 1
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        trainer.load_state(state["trainer"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        log.info("resuming %s after epoch %d", out, state["epoch"])

    epochs = tqdm(range(start, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        model.train()
        model.backbone.eval()  # frozen: BN keeps its ImageNet running statistics
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
        row: dict[str, Any] = {"epoch": epoch, **{k: v / max(1, len(loader)) for k, v in sums.items()}}
        if config.selection == "validation" and (epoch % config.eval_every == 0 or epoch == config.epochs):
            row.update(validation_metrics(model, val, device, config.batch_size * 2))
            score = row["val_image_auroc"] + row["val_pixel_auroc"]
            if score > best["score"]:  # strict: the earliest of equal epochs wins
                best = {"score": score, "epoch": epoch, "metrics": dict(row)}
                torch.save({"state": runs.trainable_state(model), "epoch": epoch}, out / runs.MODEL_FILE)
        row["seconds"] = time.perf_counter() - t_epoch
        history.append(row)
        _write_history(out / runs.HISTORY_FILE, history)
        checkpoint_path.parent.mkdir(exist_ok=True)
        torch.save(
            {"trainer": trainer.state(), "history": history, "best": best, "epoch": epoch},
            checkpoint_path,
        )
        epochs.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("total", "val_image_auroc")})
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 4) for k, v in row.items()}))

    if config.selection == "last":
        torch.save({"state": runs.trainable_state(model), "epoch": config.epochs}, out / runs.MODEL_FILE)
        best = {"score": None, "epoch": config.epochs, "metrics": history[-1] if history else {}}
    saved = torch.load(out / runs.MODEL_FILE, map_location="cpu", weights_only=True)
    runs.load_trainable_state(model, saved["state"])
    calibration = calibrate(model, splits.validation, config, device)
    (out / runs.CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")
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
        "n_train_items_per_epoch": len(splits.train_indices),
        "n_validation_parts": len(splits.validation),
        "calibration": calibration,
        "train_seconds": time.perf_counter() - t0,
    }
    write_train_report(out, config, report, history)
    return report


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", category="")
    p.add_argument("--data", required=True, help="data root in the MVTec 3D-AD layout")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, type=Path, help="run folder (created)")
    p.add_argument("--backbone", default=d.backbone, help="tf_efficientnet_lite0 (default) or wide_resnet50_2")
    p.add_argument("--backbone-weights", default=None, help="local ImageNet weights file (WideResNet-50-2)")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--feature-dim", type=int, default=None, help="per-modality feature width")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--modality", choices=["rgb", "depth", "both"], default=d.modality)
    p.add_argument("--shots", type=int, default=None, help="few-shot: K training parts")
    p.add_argument("--shot-repeats", type=int, default=d.shot_repeats, help="few-shot: copies per epoch")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--textures", default=None, help="DTD images/ folder (default: bundled fallback set)")
    p.add_argument("--no-mgag", action="store_true", help="no Gaussian anomalies at any level")
    g1 = p.add_mutually_exclusive_group()
    g1.add_argument(
        "--mgag-input",
        action="store_true",
        help="Gaussian noise at the input level even where the backbone's default is off (Lite0: off)",
    )
    g1.add_argument("--no-mgag-input", action="store_true", help="no Gaussian noise at the input level")
    for level in ("features", "adapted"):
        p.add_argument(f"--no-mgag-{level}", action="store_true", help=f"no Gaussian noise at the {level} level")
    for level in ("input", "features", "adapted"):
        p.add_argument(f"--sigma-{level}", type=float, default=getattr(d, f"sigma_{level}"))
    p.add_argument("--no-utag", action="store_true", help="no texture anomalies")
    p.add_argument(
        "--utag-depth",
        choices=DEPTH_ANOMALIES,
        default=d.utag_depth,
        help="depth anomalies: the paper's gray texture blend, smooth dents/bumps (our extension), or either "
        "per sample (default: %(default)s)",
    )
    p.add_argument("--lr-adaptor", type=float, default=d.lr_adaptor)
    p.add_argument("--lr-discriminator", type=float, default=d.lr_discriminator)
    p.add_argument("--selection", choices=["validation", "last"], default=d.selection)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--false-reject-rate", type=float, default=d.target_false_reject_rate)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(Path(args.data).resolve()),
        category=args.category,
        backbone=args.backbone,
        backbone_weights=str(Path(args.backbone_weights).resolve()) if args.backbone_weights else None,
        image_size=args.image_size,
        feature_dim=args.feature_dim,
        modality=args.modality,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        lr_adaptor=args.lr_adaptor,
        lr_discriminator=args.lr_discriminator,
        # None: the backbone's default (config.MGAG_INPUT_DEFAULTS); the flags override it either way.
        mgag_input=False if (args.no_mgag or args.no_mgag_input) else (True if args.mgag_input else None),
        mgag_features=not (args.no_mgag or args.no_mgag_features),
        mgag_adapted=not (args.no_mgag or args.no_mgag_adapted),
        sigma_input=args.sigma_input,
        sigma_features=args.sigma_features,
        sigma_adapted=args.sigma_adapted,
        utag=not args.no_utag,
        utag_depth=args.utag_depth,
        textures=str(Path(args.textures).resolve()) if args.textures else None,
        shots=args.shots,
        shot_repeats=args.shot_repeats,
        selection=args.selection,
        eval_every=args.eval_every,
        target_false_reject_rate=args.false_reject_rate,
        device=args.device,
        preprocessing=PreprocessConfig(image_size=args.image_size).to_dict(),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    sel = report["selection"]
    print(
        f"run written to {args.out}: epoch {sel['epoch']} selected ({sel['method']}); "
        f"threshold {report['calibration']['threshold']:.4f}"
    )
    return 0
