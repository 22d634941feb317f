"""`python -m training train`'s flags mapped to a TrainConfig: defaults that follow the backbone, overrides."""

from __future__ import annotations

import argparse

import pytest

from training.config import TrainConfig
from training.train.cli import add_arguments, config_from_args


def parse(*flags: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--data", "d", "--category", "c", "--out", "o", *flags]))


def test_cli_flags_override_the_backbone_default() -> None:
    assert parse().mgag_input is False
    assert parse("--backbone", "wide_resnet50_2").mgag_input is True
    assert parse("--mgag-input").mgag_input is True
    assert parse("--backbone", "wide_resnet50_2", "--no-mgag-input").mgag_input is False
    assert parse("--mgag-input", "--no-mgag").mgag_input is False  # --no-mgag switches every level off
    full = parse()
    assert full.mgag_features and full.mgag_adapted  # the other two levels stay on, at the paper's σ
    assert (full.sigma_features, full.sigma_adapted) == (0.04, 0.02)


def test_input_noise_flags_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        parse("--mgag-input", "--no-mgag-input")


def test_depth_anomalies_default_to_mixed_and_the_paper_is_one_flag_away() -> None:
    assert TrainConfig(data="d", category="c").utag_depth == "mixed"
    assert parse().utag_depth == "mixed"
    assert parse("--utag-depth", "texture").utag_depth == "texture"
    with pytest.raises(SystemExit):
        parse("--utag-depth", "bumpy")
