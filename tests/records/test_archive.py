"""Evidence archive: policy, content addressing, retention by age and size (OK before NG), and a write
failure that degrades to a record without evidence instead of a failed prediction."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.metrics import Metrics
from service.records.archive import Archive, sha256_hex
from service.records.database import create_db_engine, database_url, migrate
from service.records.store import Evidence, Recorder
from tests.records.conftest import T0, decision


def evidence(seed: int, size: int = 2000) -> Evidence:
    rng = np.random.default_rng(seed)
    amap = rng.random((16, 16), dtype=np.float32)
    return Evidence(rgb=rng.bytes(size), xyz=rng.bytes(size), anomaly_map=amap)


def recorder(tmp_path: Path, *, policy: str = "ng", max_bytes: int = 10**9, root: Path | None = None) -> Recorder:
    db_engine = create_db_engine(database_url(tmp_path / "data", None))
    migrate(db_engine)
    archive = Archive(root or tmp_path / "data" / "archive", max_bytes)
    return Recorder(db_engine, archive=archive, archive_policy=policy, metrics=Metrics().records)  # type: ignore[arg-type]


def test_ng_policy_keeps_ng_evidence_as_received_and_the_map_as_16_bit_png(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    ev = evidence(1)
    assert rec.record(decision(1, ng=False), ev).evidence == "not_kept"
    assert rec.record(decision(2, ng=True), ev).evidence == "archived"
    view = rec.get("req-00002")
    assert view is not None
    assert view["evidence"]["rgb_sha256"] == sha256_hex(ev.rgb)
    found = rec.evidence_file("req-00002", "rgb")
    assert found is not None and found[1] == ev.rgb  # the bytes as uploaded
    found_map = rec.evidence_file("req-00002", "map")
    assert found_map is not None
    png = cv2.imdecode(np.frombuffer(found_map[1], np.uint8), cv2.IMREAD_UNCHANGED)
    assert png is not None
    assert png.dtype == np.uint16 and png.shape == (16, 16)
    np.testing.assert_allclose(png / 65535.0, ev.anomaly_map, atol=1 / 65535)
    assert rec.evidence_file("req-00001", "rgb") is None


def test_all_policy_and_content_addressing(tmp_path: Path) -> None:
    rec = recorder(tmp_path, policy="all")
    ev = evidence(2)
    rec.record(decision(1), ev)
    rec.record(decision(2), ev)  # the same bytes again: one file
    assert rec.archive is not None
    files = sorted(p for p in rec.archive.root.rglob("*") if p.is_file())
    assert len(files) == 3
    assert rec.archive.size_bytes == sum(p.stat().st_size for p in files)


def test_retention_by_age(tmp_path: Path) -> None:
    rec = recorder(tmp_path, policy="all")
    rec.retention = timedelta(days=30)
    rec.record(decision(1, ng=True, at=T0 - timedelta(days=40)), evidence(1))
    rec.record(decision(2, ng=False, at=T0 - timedelta(days=1)), evidence(2))
    assert rec.prune(now=T0) == 1
    old, new = rec.get("req-00001"), rec.get("req-00002")
    assert old is not None and new is not None
    assert old["evidence"]["status"] == "pruned"
    assert old["evidence"]["rgb_sha256"] == sha256_hex(evidence(1).rgb)  # the proof stays in the record
    assert rec.evidence_file("req-00001", "rgb") is None
    assert new["evidence"]["status"] == "archived"


def test_size_limit_prunes_oldest_ok_first_and_ng_last(tmp_path: Path) -> None:
    per_part = 2 * 2000 + len(cv2.imencode(".png", np.zeros((16, 16), np.uint16))[1]) + 1000  # generous map size
    rec = recorder(tmp_path, policy="all", max_bytes=4 * per_part)
    rec.record(decision(1, ng=True), evidence(1))
    rec.record(decision(2, ng=False), evidence(2))
    rec.record(decision(3, ng=True), evidence(3))
    rec.record(decision(4, ng=False), evidence(4))
    rec.record(decision(5, ng=False), evidence(5))  # full: the oldest OK part (2) makes room
    status = {i: rec.get(f"req-{i:05d}")["evidence"]["status"] for i in range(1, 6)}  # type: ignore[index]
    assert status == {1: "archived", 2: "pruned", 3: "archived", 4: "archived", 5: "archived"}
    rec.record(decision(6, ng=True), evidence(6))
    rec.record(decision(7, ng=True), evidence(7))  # OK parts 4, 5 go before any NG part
    status = {i: rec.get(f"req-{i:05d}")["evidence"]["status"] for i in range(1, 8)}  # type: ignore[index]
    assert status == {1: "archived", 2: "pruned", 3: "archived", 4: "pruned", 5: "pruned", 6: "archived", 7: "archived"}
    rec.record(decision(8, ng=True), evidence(8))  # only NG left: the oldest NG goes
    assert rec.get("req-00001")["evidence"]["status"] == "pruned"  # type: ignore[index]
    assert rec.archive is not None and rec.archive.size_bytes <= rec.archive.max_bytes


def test_write_failure_records_without_evidence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the archive root is a file: every write fails, also for root")
    rec = recorder(tmp_path, root=blocker)
    with caplog.at_level(logging.WARNING, logger="service.records.store"):
        outcome = rec.record(decision(1, ng=True), evidence(1))
    assert outcome.evidence == "failed"
    view = rec.get("req-00001")
    assert view is not None and view["evidence"] == {
        "status": "failed",
        "rgb_sha256": None,
        "xyz_sha256": None,
        "map_sha256": None,
    }
    assert "recorded without evidence" in caplog.text
    assert rec.metrics is not None and rec.metrics.archive_failures._value.get() == 1


def test_evidence_larger_than_the_whole_archive_degrades(tmp_path: Path) -> None:
    rec = recorder(tmp_path, policy="all", max_bytes=1000)
    assert rec.record(decision(1, ng=True), evidence(1)).evidence == "failed"
    assert rec.get("req-00001") is not None
    assert rec.archive is not None and rec.archive.size_bytes == 0


def test_resync_counts_what_other_processes_stored(tmp_path: Path) -> None:
    """Two archives on one folder stand for two workers: each counts only its own writes until it counts
    the folder again, which then holds both."""
    mine, theirs = Archive(tmp_path / "archive", 10_000), Archive(tmp_path / "archive", 10_000)
    mine.settle([mine.put(b"a" * 1000)])
    theirs.settle([theirs.put(b"b" * 3000)])
    assert (mine.size_bytes, theirs.size_bytes) == (1000, 3000)
    assert mine.resync() == mine.size_bytes == 4000
    assert not mine.has_room(7000) and mine.has_room(6000)
