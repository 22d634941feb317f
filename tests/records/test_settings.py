"""The BRIDGENET_* settings of records and push: defaults, parsing from the environment, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import SettingsError, get_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("BRIDGENET_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = get_settings()
    assert (s.audit, s.archive, s.push_on) == ("on", "ng", "all")
    assert s.data_dir == Path("data") and s.database_url is None
    assert s.mqtt_url is None and s.webhook_url is None and s.webhook_secret is None
    assert s.mqtt_topic == "bridgenet/{model}/results"
    assert s.retention_days == 90 and s.archive_max_gb == 20


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGENET_AUDIT", "off")
    monkeypatch.setenv("BRIDGENET_ARCHIVE", "all")
    monkeypatch.setenv("BRIDGENET_DATABASE_URL", "postgresql+psycopg://u:pw@db/bridgenet")
    monkeypatch.setenv("BRIDGENET_MQTT_URL", "mqtt://broker:1883")
    monkeypatch.setenv("BRIDGENET_WEBHOOK_URL", "https://mes.example/hook")
    monkeypatch.setenv("BRIDGENET_WEBHOOK_SECRET", "")  # compose passes an unset secret as empty
    monkeypatch.setenv("BRIDGENET_RETENTION_DAYS", "7.5")
    s = get_settings()
    assert (s.audit, s.archive, s.retention_days) == ("off", "all", 7.5)
    assert s.database_url is not None and s.database_url.get_secret_value().endswith("@db/bridgenet")
    assert s.mqtt_url == "mqtt://broker:1883" and s.webhook_url == "https://mes.example/hook"
    assert s.webhook_secret is None


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BRIDGENET_MQTT_URL", "tcp://broker:1883", "mqtt://host:port"),
        ("BRIDGENET_WEBHOOK_URL", "ftp://x", "http://host:port or https://host:port"),
        ("BRIDGENET_ARCHIVE", "some", "BRIDGENET_ARCHIVE"),
        ("BRIDGENET_ARCHIVE_MAX_GB", "0", "BRIDGENET_ARCHIVE_MAX_GB"),
        ("BRIDGENET_PUSH_ON", "ok", "BRIDGENET_PUSH_ON"),
    ],
)
def test_bad_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=says.replace("/", ".")) as err:
        get_settings()
    assert name in str(err.value)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGENET_MQTT_URL", "tcp://user:hunter2@broker")
    with pytest.raises(SettingsError) as err:
        get_settings()
    assert "hunter2" not in str(err.value)
