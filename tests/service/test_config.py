"""Tests for service.config: settings from BRIDGENET_* variables, refusals with messages, decode limits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from service.codecs import DecodeLimits
from service.config import Settings, SettingsError, decode_limits, env_name, get_settings

GOOD_KEY = "k" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BRIDGENET_* variable of the machine running the tests may leak into them."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGENET_"):
            monkeypatch.delenv(name)


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"BRIDGENET_{name.upper()}", value)
    return get_settings()


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings_from(monkeypatch, **env)
    return str(info.value)


def test_defaults() -> None:
    s = get_settings()
    assert s.models_dir == Path("models") and s.default_model == "demo" and s.models is None
    assert s.environment == "development" and s.api_key is None and s.log_level == "INFO"
    assert s.max_upload_bytes == 64 * 1024 * 1024 and s.batch_max_size is None and s.providers == "auto"
    assert s.threshold_overrides == {} and not s.require_cuda


def test_values_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from(
        monkeypatch,
        models_dir="/srv/models",
        models="bagel, tire",
        default_model="tire",
        require_cuda="1",
        threshold_overrides='{"bagel": 0.73}',
        min_defect_area_mm2='{"tire": 2.5}',
        min_defect_length_mm='{"bagel": 2}',
        max_upload_bytes="1000",
        request_timeout_s="2.5",
        log_level="debug",
        intra_op_threads="3",
        batch_max_size="8",
        batch_wait_ms="1.5",
    )
    assert s.models_dir == Path("/srv/models") and s.models == ["bagel", "tire"] and s.default_model == "tire"
    assert s.require_cuda is True and s.threshold_overrides == {"bagel": 0.73}
    assert s.min_defect_area_mm2 == {"tire": 2.5} and s.min_defect_length_mm == {"bagel": 2.0}
    assert s.max_upload_bytes == 1000 and s.request_timeout_s == 2.5 and s.log_level == "DEBUG"
    assert s.intra_op_threads == 3 and s.batch_max_size == 8 and s.batch_wait_ms == 1.5


def test_models_as_json_list_and_lowercase_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("bridgenet_models", '["demo", "x"]')
    assert get_settings().models == ["demo", "x"]


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker compose passes `${BRIDGENET_API_KEY:-}`: empty, not absent.
    s = settings_from(monkeypatch, api_key="", models="", threshold_overrides="", min_defect_area_mm2="")
    assert s.api_key is None and s.models is None and s.threshold_overrides == {} and s.min_defect_area_mm2 == {}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"max_upload_bytes": "-5"}, "BRIDGENET_MAX_UPLOAD_BYTES: Input should be greater than 0 (got '-5')"),
        ({"max_image_side": "0"}, "BRIDGENET_MAX_IMAGE_SIDE"),
        ({"max_queue": "-1"}, "BRIDGENET_MAX_QUEUE"),
        ({"request_timeout_s": "0"}, "BRIDGENET_REQUEST_TIMEOUT_S"),
        (
            {"log_level": "loud"},
            "BRIDGENET_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'",
        ),
        ({"require_cuda": "maybe"}, "BRIDGENET_REQUIRE_CUDA: Input should be a valid boolean"),
        ({"threshold_overrides": "{x"}, "BRIDGENET_THRESHOLD_OVERRIDES: expected a JSON object"),
        ({"threshold_overrides": '{"a": "NaN"}'}, "BRIDGENET_THRESHOLD_OVERRIDES"),
        ({"min_defect_area_mm2": "[2]"}, "BRIDGENET_MIN_DEFECT_AREA_MM2"),
        (
            {"min_defect_area_mm2": '{"a": 0}'},
            "BRIDGENET_MIN_DEFECT_AREA_MM2: expected model names mapped to areas > 0",
        ),
        (
            {"models": "demo", "min_defect_area_mm2": '{"other": 1}'},
            "BRIDGENET_MIN_DEFECT_AREA_MM2 names models that are not loaded",
        ),
        ({"min_defect_length_mm": "{2"}, 'BRIDGENET_MIN_DEFECT_LENGTH_MM: expected a JSON object such as {"bagel": 2}'),
        (
            {"min_defect_length_mm": '{"a": -2}'},
            "BRIDGENET_MIN_DEFECT_LENGTH_MM: expected model names mapped to lengths > 0 in mm",
        ),
        (
            {"models": "demo", "min_defect_length_mm": '{"other": 1}'},
            "BRIDGENET_MIN_DEFECT_LENGTH_MM names models that are not loaded",
        ),
        ({"environment": "staging"}, "BRIDGENET_ENVIRONMENT: Input should be 'development' or 'production'"),
        ({"providers": "tensorrt"}, "BRIDGENET_PROVIDERS"),
        ({"batch_max_size": "0"}, "BRIDGENET_BATCH_MAX_SIZE"),
        ({"models": "a,,b"}, "BRIDGENET_MODELS: expected one or more non-empty model names"),
        ({"models": "a,a", "default_model": "a"}, "model names must be distinct"),
        ({"models": "a,b"}, "BRIDGENET_DEFAULT_MODEL='demo' is not in BRIDGENET_MODELS"),
        ({"models": "demo", "threshold_overrides": '{"other": 1}'}, "names models that are not loaded: ['other']"),
        ({"require_cuda": "true", "providers": "cpu"}, "BRIDGENET_REQUIRE_CUDA contradicts BRIDGENET_PROVIDERS=cpu"),
        ({"batch_wait_ms": "900", "request_timeout_s": "0.5"}, "must be shorter than BRIDGENET_REQUEST_TIMEOUT_S"),
    ],
)
def test_bad_values_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    message = refusal(monkeypatch, **env)
    assert message.startswith("invalid settings: ")
    assert expected in message


def test_every_bad_variable_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, max_upload_bytes="-1", log_level="x", max_inflight="0")
    for name in ("MAX_UPLOAD_BYTES", "LOG_LEVEL", "MAX_INFLIGHT"):
        assert f"BRIDGENET_{name}" in message


def test_production_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, environment="production")
    assert "BRIDGENET_ENVIRONMENT=production needs BRIDGENET_API_KEY" in message
    assert "BRIDGENET_ALLOW_ANONYMOUS" in message
    assert "BRIDGENET_API_KEY" in refusal(monkeypatch, environment="production", api_key="   ")


def test_production_with_key_or_explicit_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from(monkeypatch, environment="production", api_key=GOOD_KEY)
    assert s.api_key is not None and s.api_key.get_secret_value() == GOOD_KEY
    assert GOOD_KEY not in repr(s) and GOOD_KEY not in str(s)
    monkeypatch.delenv("BRIDGENET_API_KEY")
    assert settings_from(monkeypatch, allow_anonymous="true").api_key is None


def test_short_production_key_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, environment="production", api_key="hunter2")
    assert "has 7 characters; production needs at least 16" in message
    assert "hunter2" not in message
    # Development accepts any key (tests, local runs).
    monkeypatch.setenv("BRIDGENET_ENVIRONMENT", "development")
    assert get_settings().api_key is not None


def test_short_or_shared_admin_key_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, environment="production", api_key=GOOD_KEY, admin_key="short-admin")
    assert "BRIDGENET_ADMIN_KEY has 11 characters; production needs at least 16" in message
    assert "short-admin" not in message
    for other in ("api_key", "results_key"):
        values = {"api_key": GOOD_KEY, "results_key": "results-key-0123456789", "admin_key": "admin-key-0123456789"}
        values["admin_key"] = values[other]
        message = refusal(monkeypatch, environment="production", **values)
        assert f"{env_name(other)} and BRIDGENET_ADMIN_KEY are the same value" in message
        assert values[other] not in message
    message = refusal(monkeypatch, environment="production", api_key=GOOD_KEY, results_key=GOOD_KEY)
    assert "BRIDGENET_API_KEY and BRIDGENET_RESULTS_KEY are the same value" in message
    # Distinct, long keys start; development accepts anything (tests, local runs).
    monkeypatch.delenv("BRIDGENET_ADMIN_KEY", raising=False)
    good = settings_from(
        monkeypatch, environment="production", api_key=GOOD_KEY, results_key="r" * 16, admin_key="a" * 16
    )
    assert good.admin_key is not None
    assert settings_from(monkeypatch, environment="development", admin_key=GOOD_KEY).admin_key is not None


def test_forwarded_allow_ips_takes_addresses_and_ranges_only(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from(monkeypatch, forwarded_allow_ips="10.0.0.5, 172.28.0.0/24")
    assert s.forwarded_allow_ips == ["10.0.0.5", "172.28.0.0/24"]
    assert "BRIDGENET_FORWARDED_ALLOW_IPS" in refusal(monkeypatch, forwarded_allow_ips="*")


def test_unknown_variable_warned_not_fatal(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.config"):
        settings_from(monkeypatch, require_cudaa="1", port="8000")
    assert "BRIDGENET_REQUIRE_CUDAA" in caplog.text and "BRIDGENET_PORT" in caplog.text


def test_direct_construction_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra_setting"):
        Settings(extra_setting=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="frozen"):
        Settings().max_queue = 3  # type: ignore[misc]


def test_decode_limits_follow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from(monkeypatch, max_upload_bytes="1234", max_image_side="100", max_image_pixels="5000")
    assert decode_limits(s) == DecodeLimits(max_bytes=1234, max_side=100, max_pixels=5000)


def test_help_lists_every_setting_with_its_help_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    from service.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, field in Settings.model_fields.items():
        variable = f"BRIDGENET_{name.upper()}"
        line = next((text for text in lines if text.split() and text.split()[0] == variable), None)
        assert line is not None, f"{variable} is not in --help"
        assert field.description and field.description in line and "(default: " in line, line
    (queue,) = [text for text in lines if "BRIDGENET_MAX_QUEUE " in text]
    assert queue.endswith("(default: 16)") and "429" in queue
