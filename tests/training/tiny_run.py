"""A tiny synthetic category and a short training run on it, shared by the end-to-end training tests."""

from __future__ import annotations

from pathlib import Path

from training.cli import main as cli
from training.synth.generate import generate

TRAIN_ARGS = ["--image-size", "64", "--batch-size", "4", "--no-progress"]


def tiny_data(root: Path) -> Path:
    """6 training, 3 validation and 2 test parts per defect of the synthetic puck, 96 px."""
    generate(root, ["puck"], seed=3, size=96, n_train=6, n_validation=3, n_test_per_defect=2, progress=False)
    return root


def tiny_run(data: Path, out: Path, epochs: int) -> Path:
    """`train` through the CLI at 64 px; returns the run folder."""
    args = ["train", "--data", str(data), "--category", "puck", "--out", str(out), "--epochs", str(epochs)]
    assert cli([*args, *TRAIN_ARGS]) == 0
    return out
