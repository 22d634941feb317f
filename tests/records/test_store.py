"""The audit trail on SQLite and on PostgreSQL: durable, complete under concurrency, migrated, queryable."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from service.metrics import Metrics
from service.records.database import SchemaTooNewError, create_db_engine, current_revision, head_revision, migrate
from service.records.store import CursorError, DuplicateRequestError, Recorder, ResultFilter
from service.records.tables import Base, DecisionRow, OutboxRow
from tests.records.conftest import T0, decision


def open_db(url: str) -> Engine:
    db_engine = create_db_engine(url)
    migrate(db_engine)
    return db_engine


def test_record_survives_a_restart(db_url: str) -> None:
    first = open_db(db_url)
    Recorder(first, destinations=("mqtt", "webhook")).record(decision(1, ng=True))
    first.dispose()  # the "service" stops; a new one opens the same database

    second = open_db(db_url)
    view = Recorder(second).get("req-00001")
    assert view is not None
    assert view["part_id"] == "line1-0001"
    assert view["is_anomalous"] is True and view["score"] == 0.9 and view["threshold"] == 0.5
    assert view["model"] == {"name": "demo", "version": "1.0.0", "onnx_sha256": "ab" * 32}
    assert view["created"] == (T0 + timedelta(seconds=1)).isoformat()
    assert view["timings_ms"] == {"decode": 1.5, "inference": 4.25, "total": 7.0}
    with Session(second) as s:
        rows = s.scalars(select(OutboxRow).order_by(OutboxRow.id)).all()
        assert [r.destination for r in rows] == ["mqtt", "webhook"]
        assert all(json.loads(r.payload) == decision(1, ng=True).payload() for r in rows)
    second.dispose()


def test_sixteen_concurrent_writers_lose_no_record(db_url: str) -> None:
    db_engine = open_db(db_url)
    metrics = Metrics()
    recorder = Recorder(db_engine, destinations=("webhook",), metrics=metrics.records)
    n = 16 * 20
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda i: recorder.record(decision(i, ng=i % 3 == 0)), range(n)))
    assert [o.evidence for o in outcomes] == ["not_kept"] * n
    with Session(db_engine) as s:
        ids = set(s.scalars(select(DecisionRow.request_id)).all())
        queued = s.scalar(select(func.count()).select_from(OutboxRow))
    assert ids == {f"req-{i:05d}" for i in range(n)}
    assert queued == n
    assert metrics.registry.get_sample_value("bridgenet_audit_write_seconds_count") == n
    db_engine.dispose()


def test_push_policy_ng_queues_only_ng(db_url: str) -> None:
    db_engine = open_db(db_url)
    recorder = Recorder(db_engine, destinations=("mqtt",), push_on="ng")
    assert recorder.record(decision(1, ng=False)).queued == ()
    assert recorder.record(decision(2, ng=True)).queued == ("mqtt",)
    assert recorder.backlog()["mqtt"]["waiting"] == 1
    db_engine.dispose()


def test_a_repeated_request_id_keeps_the_first_record(db_url: str) -> None:
    db_engine = open_db(db_url)
    recorder = Recorder(db_engine, destinations=("mqtt",))
    recorder.record(decision(1, ng=True))
    with pytest.raises(DuplicateRequestError):
        recorder.record(decision(1, ng=False))
    view = recorder.get("req-00001")
    assert view is not None and view["is_anomalous"] is True
    assert recorder.backlog()["mqtt"]["waiting"] == 1
    db_engine.dispose()


def test_query_filters_and_cursor_pagination(db_url: str) -> None:
    db_engine = open_db(db_url)
    recorder = Recorder(db_engine)
    for i in range(25):
        recorder.record(decision(i, ng=i % 5 == 0, model="cable" if i >= 20 else "demo"))
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = recorder.query(ResultFilter(), limit=7, cursor=cursor)
        seen += [v["request_id"] for v in page]
        if cursor is None:
            break
    assert seen == [f"req-{i:05d}" for i in reversed(range(25))]  # newest first, each once

    ng, _ = recorder.query(ResultFilter(verdict="ng"))
    assert [v["request_id"] for v in ng] == ["req-00020", "req-00015", "req-00010", "req-00005", "req-00000"]
    cable, _ = recorder.query(ResultFilter(model="cable", verdict="ok"))
    assert [v["request_id"] for v in cable] == ["req-00024", "req-00023", "req-00022", "req-00021"]
    window, _ = recorder.query(ResultFilter(since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=6)))
    assert [v["request_id"] for v in window] == ["req-00005", "req-00004", "req-00003"]
    part, _ = recorder.query(ResultFilter(part_id="line1-0007"))
    assert [v["request_id"] for v in part] == ["req-00007"]
    with pytest.raises(CursorError):
        recorder.query(ResultFilter(), cursor="not-a-cursor")
    db_engine.dispose()


def test_migrations_create_exactly_the_tables(db_url: str) -> None:
    db_engine = open_db(db_url)
    assert current_revision(db_engine) == head_revision()
    with db_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    migrate(db_engine)  # a second start is a no-op
    assert current_revision(db_engine) == head_revision()
    db_engine.dispose()


def test_a_newer_schema_is_refused(db_url: str) -> None:
    db_engine = open_db(db_url)
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaTooNewError, match=r"9999_from_the_future.*newer BridgeNet version"):
        migrate(db_engine)
    assert current_revision(db_engine) == "9999_from_the_future"  # left untouched
    db_engine.dispose()


def test_records_from_before_the_review_band_get_their_verdict_and_no_recipe(db_url: str) -> None:
    """0006_recipes on a database holding records: each keeps the verdict its is_anomalous gave."""
    from alembic import command
    from alembic.config import Config

    from service.records.database import MIGRATIONS_DIR

    db_engine = create_db_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005_lifecycle")
    columns = "request_id, received_at, model, model_version, model_sha256, threshold, threshold_source, score, " \
              "is_anomalous, defect_area_fraction, decision_rule, regions, timings_ms, provider, evidence"  # fmt: skip
    with db_engine.begin() as conn:
        for request_id, ng in (("old-ng", True), ("old-ok", False)):
            conn.execute(
                text(
                    f"INSERT INTO decisions ({columns}) VALUES (:id, :at, 'demo', '1', :sha, 0.5, 'manifest', "
                    ":score, :ng, 0.0, 'score', '[]', '{}', 'cpu', 'not_kept')"
                ),
                {"id": request_id, "at": T0, "sha": "0" * 64, "score": 0.9 if ng else 0.1, "ng": ng},
            )
    assert migrate(db_engine) == head_revision()
    recorder = Recorder(db_engine)
    old_ng, old_ok = recorder.get("old-ng"), recorder.get("old-ok")
    assert old_ng is not None and old_ok is not None
    assert (old_ng["verdict"], old_ok["verdict"]) == ("ng", "ok") and old_ng["recipe"] is None
    recorder.record(replace(decision(1, ng=True), verdict="review", recipe="line2", recipe_version="3"))
    reviewed, _ = recorder.query(ResultFilter(verdict="review"))
    assert [(v["request_id"], v["recipe"]) for v in reviewed] == [("req-00001", {"id": "line2", "version": "3"})]
    assert [v["request_id"] for v in recorder.query(ResultFilter(verdict="ng"))[0]] == ["old-ng"]
    db_engine.dispose()
