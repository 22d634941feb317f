"""PreprocessConfig: validation, JSON round trip and the version check that guards shipped models."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from service.preprocessing import PREPROCESSING_VERSION, ConfigError, PreprocessConfig, PreprocessingError


def test_defaults_follow_the_reference() -> None:
    config = PreprocessConfig()
    assert config.image_size == 256
    assert config.plane_distance == 0.005
    assert config.corner_size == 3
    assert config.fill_iterations == 2
    assert (config.small_close_size, config.small_close_iterations) == (3, 3)
    assert (config.large_close_size, config.large_closings) == (5, 2)
    assert config.mean == (0.485, 0.456, 0.406)
    assert config.std == (0.229, 0.224, 0.225)


def test_round_trip_through_json_keeps_every_field() -> None:
    config = PreprocessConfig(image_size=288, plane_distance=0.004, border_width=12, mean=[0.5, 0.5, 0.5])  # type: ignore[arg-type]
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == PREPROCESSING_VERSION
    assert data["mean"] == [0.5, 0.5, 0.5]
    back = PreprocessConfig.from_dict(data)
    assert back == config
    assert isinstance(back.mean, tuple)
    assert set(data) == {f.name for f in dataclasses.fields(PreprocessConfig)} | {"version"}


def test_from_dict_fills_missing_fields_with_defaults() -> None:
    assert PreprocessConfig.from_dict({"image_size": 64}) == PreprocessConfig(image_size=64)


def test_version_mismatch_is_refused_with_both_versions_named() -> None:
    data = PreprocessConfig().to_dict() | {"version": "0"}
    with pytest.raises(ConfigError, match=r"version '0'.*version '" + PREPROCESSING_VERSION):
        PreprocessConfig.from_dict(data)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="plane_dist"):
        PreprocessConfig.from_dict({"plane_dist": 0.01})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 4, "image_size"),
        ("plane_distance", 0.0, "plane_distance"),
        ("corner_size", 0, "corner_size"),
        ("fill_iterations", -1, "fill_iterations"),
        ("std", (0.2, 0.0, 0.2), "std"),
        ("min_side", 4, "min_side"),
    ],
)
def test_invalid_values_are_refused(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PreprocessConfig(**{field: value})


def test_config_is_frozen_and_errors_are_value_errors() -> None:
    config = PreprocessConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_size = 512  # type: ignore[misc]
    assert issubclass(ConfigError, PreprocessingError)
    assert issubclass(PreprocessingError, ValueError)
