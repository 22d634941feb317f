"""One record per request id, and no evidence file without its record: a repeated X-Request-ID is refused
(409) before any prediction work, a record that fails or is refused leaves none of its files behind, and
the sweep deletes files that no record names (a crash between the file and its record)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from service.main import create_app
from service.metrics import Metrics
from service.records.archive import Archive, sha256_hex
from service.records.database import create_db_engine, migrate
from service.records.store import DuplicateRequestError, Evidence, Recorder, RecordError
from tests.records.conftest import decision
from tests.service.fake_model import make_part, make_settings, png_bytes, tiff_bytes, write_fake_model

FAIL_PART = "refused-by-the-database"


def evidence(seed: int) -> Evidence:
    rng = np.random.default_rng(seed)
    return Evidence(rgb=rng.bytes(3000), xyz=rng.bytes(3000), anomaly_map=rng.random((16, 16), dtype=np.float32))


def archive_files(root: Path) -> set[str]:
    """Every file under the archive, temporary ones included."""
    return {p.name for p in root.rglob("*") if p.is_file()}


def refuse_part_in_database(engine: Engine, part_id: str) -> None:
    """A trigger that makes the database itself refuse the record of `part_id`: a real failed INSERT."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON decisions "
                    f"WHEN NEW.part_id = '{part_id}' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.part_id = '{part_id}' THEN RAISE EXCEPTION 'refused by trigger'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text("CREATE TRIGGER refuse BEFORE INSERT ON decisions FOR EACH ROW EXECUTE FUNCTION refuse()")
            )


@pytest.fixture
def archived(db_url: str, tmp_path: Path) -> tuple[Recorder, Path]:
    engine = create_db_engine(db_url)
    migrate(engine)
    root = tmp_path / "archive"
    return Recorder(engine, archive=Archive(root, 10**9), archive_policy="all", metrics=Metrics().records), root


def test_a_repeated_id_is_refused_and_its_evidence_removed(archived: tuple[Recorder, Path]) -> None:
    recorder, root = archived
    first = recorder.record(decision(1, ng=True), evidence(1))
    kept = archive_files(root)
    assert len(kept) == 3 and first.evidence == "archived"
    with pytest.raises(DuplicateRequestError):
        recorder.record(decision(1, ng=False), evidence(2))  # other bytes: three more files, then refused
    assert archive_files(root) == kept
    with pytest.raises(DuplicateRequestError):
        recorder.record(decision(1, ng=True), evidence(1))  # the same bytes: the first record's files stay
    assert archive_files(root) == kept
    view = recorder.get("req-00001")
    assert view is not None and view["is_anomalous"] is True
    recorder.db_engine.dispose()


def test_a_record_that_fails_after_its_evidence_leaves_no_file(archived: tuple[Recorder, Path]) -> None:
    recorder, root = archived
    refuse_part_in_database(recorder.db_engine, FAIL_PART)
    recorder.record(decision(1, ng=True), evidence(1))
    kept = archive_files(root)
    bad = decision(2, ng=True)
    bad = type(bad)(**{**bad.__dict__, "part_id": FAIL_PART})
    with pytest.raises(RecordError) as caught:
        recorder.record(bad, evidence(2))
    assert not isinstance(caught.value, DuplicateRequestError)
    assert archive_files(root) == kept
    assert recorder.archive is not None and recorder.archive.size_bytes == sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file()
    )
    recorder.db_engine.dispose()


def test_the_sweep_removes_files_no_record_names_and_counts_them(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'records.db'}")
    migrate(engine)
    metrics = Metrics()
    archive = Archive(tmp_path / "archive", 10**9)
    recorder = Recorder(engine, archive=archive, archive_policy="all", metrics=metrics.records)
    recorder.record(decision(1, ng=True), evidence(1))
    named = archive_files(tmp_path / "archive")
    old = time.time() - 3600
    for path in (tmp_path / "archive").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    orphans = [b"left by a crash", b"another one"]
    for blob in orphans:  # planted as a crash would leave them: the file, then no record
        archive.settle([archive.put(blob)])
    young = archive.put(b"a record is committing")
    archive.settle([young])
    for blob in orphans:
        os.utime(archive.path(sha256_hex(blob)), (old, old))
    assert recorder.sweep_orphans() == 2
    assert archive_files(tmp_path / "archive") == named | {young}  # the young one may still get its record
    assert metrics.registry.get_sample_value("bridgenet_archive_orphans_removed_total") == 2
    assert recorder.sweep_orphans(min_age_s=0) == 1 and archive_files(tmp_path / "archive") == named
    assert recorder.get("req-00001") is not None and recorder.evidence_file("req-00001", "rgb") is not None
    engine.dispose()


def test_two_predictions_with_one_request_id_leave_one_record_and_no_orphan(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_fake_model(models, "fake")
    data = tmp_path / "data"
    settings = make_settings(models, data_dir=data, archive="all")
    (rgb1, xyz1), (rgb2, xyz2) = make_part(40, 48, seed=1), make_part(40, 48, seed=2)

    def predict(client: TestClient, rgb: np.ndarray, xyz: np.ndarray, request_id: str, part: str) -> dict:
        response = client.post(
            "/v1/predict",
            files={"rgb": ("rgb.png", png_bytes(rgb), "image/png"), "xyz": ("xyz.tiff", tiff_bytes(xyz), "image/tiff")},
            data={"part_id": part},
            headers={"X-Request-ID": request_id},
        )
        return {"status": response.status_code, **response.json()}

    with TestClient(create_app(settings)) as client:
        first = predict(client, rgb1, xyz1, "plc-0001", "A")
        assert first["status"] == 200
        second = predict(client, rgb2, xyz2, "plc-0001", "B")  # a PLC whose counter restarted
        assert second["status"] == 409 and second["error"]["code"] == "duplicate_request_id"
        assert "plc-0001" in second["error"]["message"]
        listed = client.get("/v1/results").json()["results"]
        assert [(r["request_id"], r["part_id"]) for r in listed] == [("plc-0001", "A")]
        # The refusal came before scoring: only the first part was scored.
        families = text_string_to_metric_families(client.get("/metrics").text)
        scored = [s.value for f in families if f.name == "bridgenet_predictions" for s in f.samples]
        assert sum(scored) == 1
        files = archive_files(data / "archive")
        assert len(files) == 3
        named = client.get("/v1/results/plc-0001").json()["evidence"]
        assert files == {named["rgb_sha256"], named["xyz_sha256"], named["map_sha256"]}

        engine = client.app.state.service.records.recorder.db_engine  # type: ignore[attr-defined]
        refuse_part_in_database(engine, FAIL_PART)
        failed = predict(client, rgb2, xyz2, "plc-0002", FAIL_PART)
        assert failed["status"] == 503 and failed["error"]["code"] == "audit_unavailable"
        assert client.get("/v1/results/plc-0002").status_code == 404
        assert archive_files(data / "archive") == files  # the failed record's evidence went with it
        ok = predict(client, rgb2, xyz2, "plc-0002", "C")  # the retry after a failed record is answered
        assert ok["status"] == 200
        assert len(client.get("/v1/results").json()["results"]) == 2
