"""TrainConfig: defaults that depend on the backbone, the typed preprocessing, and config.json round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.preprocessing import PREPROCESSING_VERSION, ConfigError, PreprocessConfig
from training.config import MGAG_INPUT_DEFAULTS, TrainConfig


def test_input_noise_default_follows_the_backbone() -> None:
    assert MGAG_INPUT_DEFAULTS["tf_efficientnet_lite0"] is False
    assert TrainConfig(data="d", category="c").mgag_input is False  # Lite0, the default backbone
    assert TrainConfig(data="d", category="c", backbone="wide_resnet50_2").mgag_input is True  # the paper's
    assert TrainConfig(data="d", category="c", mgag_input=True).mgag_input is True  # explicit wins


def test_saved_config_holds_the_resolved_value() -> None:
    config = TrainConfig(data="d", category="c")
    assert config.to_dict()["mgag_input"] is False
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_preprocessing_is_typed_follows_image_size_and_saves_as_before() -> None:
    config = TrainConfig(data="d", category="c", image_size=64)
    assert isinstance(config.preprocessing, PreprocessConfig) and config.preprocessing.image_size == 64
    saved = config.to_dict()["preprocessing"]
    # config.json holds PreprocessConfig.to_dict(), with its version, as runs before this type did.
    assert saved == PreprocessConfig(image_size=64).to_dict() and saved["version"] == PREPROCESSING_VERSION
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="differs from image_size 64"):
        TrainConfig(data="d", category="c", image_size=64, preprocessing=PreprocessConfig(image_size=128))


def test_a_run_with_other_preprocessing_does_not_load(tmp_path: Path) -> None:
    data = TrainConfig(data="d", category="c").to_dict()
    data["preprocessing"]["version"] = "0"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"preprocessing version .0. of the stored config is not the one"):
        TrainConfig.load(tmp_path / "config.json")
