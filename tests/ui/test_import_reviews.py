"""`python -m training import-reviews` against the service's HTTP API: reviewed parts land in the MVTec
3D-AD layout, check-data accepts the result, and (slow) it trains."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from service.config import Settings
from service.records.reviews import add_review
from service.records.store import Evidence
from tests.ui.parts import GOOD_RGB, GOOD_XYZ, REGION, anomaly_map, decision, record
from tests.ui.test_http import build_app
from training import runs
from training.data.check import check_data
from training.data.import_reviews import ReviewImportError, import_reviews

KEY = "import-test-key-0123456789"  # the results reader's key
LINE_KEY = "import-line-key-0123456789"
NOW = datetime.now(UTC).replace(microsecond=0)
GOOD_PARTS = 6  # false rejects: 5 to train/good, the 5th to validation/good


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TestClient]:
    """The results API over a real SQLite audit trail: NG parts reviewed as false rejects and confirmed
    defects, an OK part with a missed defect (archive=all keeps its evidence), and an unreviewed one."""
    settings = Settings(data_dir=tmp_path / "data", api_key=LINE_KEY, results_key=KEY, archive="all")  # type: ignore[arg-type]
    with TestClient(build_app(settings), headers={"X-API-Key": KEY}) as c:
        recorder = c.app.state.service.records.recorder  # type: ignore[attr-defined]
        db_engine = recorder.db_engine
        at = iter(NOW - timedelta(minutes=m) for m in range(100, 0, -1))
        for i in range(GOOD_PARTS):
            # A false reject is a good part judged NG: the demo's good sample recorded with an NG verdict.
            good_judged_ng = replace(decision(f"fr-{i}", ng=True, received_at=next(at)), regions=())
            recorder.record(good_judged_ng, Evidence(GOOD_RGB, GOOD_XYZ, anomaly_map(False)))
            add_review(db_engine, f"fr-{i}", "false_reject", operator="Ana")
        for i, kind in enumerate(("dent", "dent", "")):
            record(recorder, f"defect-{i}", ng=True, received_at=next(at))
            add_review(db_engine, f"defect-{i}", "confirmed", operator="Ben", defect_type=kind)
        record(recorder, "missed-0", ng=False, received_at=next(at))
        add_review(db_engine, "missed-0", "missed_defect", operator="Ben", defect_type="crack", comment="hairline")
        record(recorder, "unreviewed", ng=True, received_at=next(at))
        yield c


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_reviewed_parts_land_in_the_mvtec_layout(service: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    summary = import_reviews(service, out, "puck")
    assert summary["by_folder"] == {
        "test/crack": 1, "test/dent": 2, "test/unspecified": 1, "train/good": 5, "validation/good": 1,
    }  # fmt: skip
    assert summary["skipped_no_evidence"] == 0
    root = out / "puck"
    assert files(root / "validation" / "good" / "rgb") == ["fr-4.png"]
    assert files(root / "test" / "dent" / "gt") == ["defect-0.png", "defect-1.png"]
    assert not (root / "train" / "good" / "gt").exists()
    # The uploads are the archived bytes; the mask is the region's box (no regions: an empty mask).
    assert (root / "train" / "good" / "xyz" / "fr-0.tiff").read_bytes() == GOOD_XYZ
    mask = cv2.imread(str(root / "test" / "dent" / "gt" / "defect-0.png"), cv2.IMREAD_UNCHANGED)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (
        REGION["x"], REGION["y"], REGION["x"] + REGION["width"], REGION["y"] + REGION["height"],
    )  # fmt: skip
    assert not cv2.imread(str(root / "test" / "crack" / "gt" / "missed-0.png"), cv2.IMREAD_UNCHANGED).any()
    assert tifffile.imread(root / "test" / "crack" / "xyz" / "missed-0.tiff").shape == (400, 400, 3)
    trail = [json.loads(line) for line in (root / "reviews.jsonl").read_text().splitlines()]
    assert {t["request_id"] for t in trail} == {f"fr-{i}" for i in range(6)} | {
        "defect-0",
        "defect-1",
        "defect-2",
        "missed-0",
    }
    missed = next(t for t in trail if t["request_id"] == "missed-0")
    assert missed["review"]["comment"] == "hairline" and missed["written_to"] == "test/crack/rgb/missed-0.png"

    report = check_data(out, "puck")
    assert report["failures"] == []
    assert report["splits"]["train"] == {"good": 5} and report["splits"]["test"]["dent"] == 2


def test_since_limits_the_import_and_a_second_import_adds_to_it(service: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    recent = import_reviews(service, out, "puck", since=(NOW - timedelta(minutes=94)).isoformat())
    assert recent["by_folder"] == {"test/crack": 1, "test/dent": 2, "test/unspecified": 1}
    again = import_reviews(service, out, "puck")
    assert again["imported"] == 10
    assert len(files(out / "puck" / "test" / "dent" / "rgb")) == 2  # same request ids: the same files


def test_the_cli_refuses_a_wrong_key_with_the_services_error(service: TestClient, tmp_path: Path) -> None:
    service.headers["X-API-Key"] = "wrong"
    with pytest.raises(ReviewImportError, match="401"):
        import_reviews(service, tmp_path / "x", "puck")


def test_the_line_key_cannot_import_reviews(service: TestClient, tmp_path: Path) -> None:
    service.headers["X-API-Key"] = LINE_KEY
    with pytest.raises(ReviewImportError, match="403"):
        import_reviews(service, tmp_path / "x", "puck")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_imported_reviews_train(service: TestClient, tmp_path: Path) -> None:
    """A one-epoch run at 64 px on the imported parts, niced, as its own process (the CLI a user runs)."""
    data, run = tmp_path / "data", tmp_path / "run"
    import_reviews(service, data, "puck")
    args = ["--image-size", "64", "--batch-size", "4", "--epochs", "1", "--no-progress", "--device", "cpu"]
    command = ["nice", "-n", "10", sys.executable, "-m", "training", "train", "--data", str(data), "--category", "puck"]
    done = subprocess.run([*command, "--out", str(run), *args], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / runs.MODEL_FILE).is_file() and (run / runs.CALIBRATION_FILE).is_file()
    report = json.loads((run / runs.REPORT_FILE).read_text(encoding="utf-8"))
    assert report["selection"]["validation_source"] == "validation split"  # the imported validation/good parts
