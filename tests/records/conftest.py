"""Fixtures of the records tests: the same tests run on SQLite and on a real PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.records.database import database_url
from service.records.store import DecisionRecord
from tests.records.servers import Postgres, WebhookReceiver


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite under tmp_path, or a new database in the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return database_url(tmp_path / "data", None)
    server: Postgres = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def decision(i: int, *, ng: bool = False, model: str = "demo", at: datetime | None = None) -> DecisionRecord:
    """The i-th part's record, received i seconds after T0 unless `at` says otherwise."""
    return DecisionRecord(
        request_id=f"req-{i:05d}",
        part_id=f"line1-{i:04d}",
        received_at=at or T0 + timedelta(seconds=i),
        model=model,
        model_version="1.0.0",
        model_sha256="ab" * 32,
        threshold=0.5,
        threshold_source="manifest",
        score=0.9 if ng else 0.1,
        is_anomalous=ng,
        defect_area_fraction=0.02 if ng else 0.0,
        provider="CPUExecutionProvider",
        timings_ms={"decode": 1.5, "inference": 4.25, "total": 7.0},
        client="127.0.0.1",
    )
