"""service.records.reviews on SQLite and on a real PostgreSQL cluster (the records tests' fixtures): the
same queries must give the same answers on both."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.records.database import create_db_engine, migrate
from service.records.reviews import (
    PartFilter,
    ReviewError,
    add_review,
    counts_per_hour,
    latest_reviews,
    list_parts,
    review_history,
    review_stats,
)
from service.records.store import Recorder
from tests.records.conftest import T0, db_url, postgres  # noqa: F401 (fixtures)
from tests.ui.parts import decision


def test_reviews_list_counts_and_stats(db_url: str) -> None:  # noqa: F811
    db_engine = create_db_engine(db_url)
    try:
        assert migrate(db_engine) == "0002"
        recorder = Recorder(db_engine)
        for i in range(6):  # two hours: 0-2 in the first, 3-5 in the second; NG: 0, 2, 4 (and "b-0")
            recorder.record(decision(f"a-{i}", ng=i % 2 == 0, received_at=T0 + timedelta(minutes=20 * i)))
        recorder.record(decision("b-0", ng=True, received_at=T0, model="other"))
        add_review(db_engine, "a-0", "confirmed", operator="Ana", defect_type="dent")
        add_review(db_engine, "a-2", "confirmed", operator="Ana", now=T0)
        add_review(db_engine, "a-2", "false_reject", operator="Ben", comment="dust", now=T0 + timedelta(hours=1))
        add_review(db_engine, "a-1", "missed_defect", operator="Ben")
        with pytest.raises(ReviewError):
            add_review(db_engine, "a-3", "confirmed", operator="Ana")

        assert [r["operator"] for r in review_history(db_engine, "a-2")] == ["Ana", "Ben"]
        assert latest_reviews(db_engine, ["a-2", "a-4"]) == {"a-2": review_history(db_engine, "a-2")[1]}
        everything = PartFilter(since=T0 - timedelta(hours=1))
        assert [p["request_id"] for p in list_parts(db_engine, everything)][:4] == [
            "a-4",
            "a-2",
            "b-0",
            "a-0",
        ]  # same time: request id decides
        unreviewed_ng = list_parts(db_engine, PartFilter(verdict="ng", reviewed=False, model="demo"))
        assert [p["request_id"] for p in unreviewed_ng] == ["a-4"]
        assert counts_per_hour(db_engine, PartFilter(model="demo")) == [
            {"hour": T0.isoformat(), "ok": 1, "ng": 2},
            {"hour": (T0 + timedelta(hours=1)).isoformat(), "ok": 2, "ng": 1},
        ]
        stats = {s["model"]: s for s in review_stats(db_engine)}
        demo = stats["demo"]
        assert (demo["parts"], demo["ng"], demo["reviewed_ng"], demo["confirmed"], demo["false_reject"]) == (
            6,
            3,
            2,
            1,
            1,
        )
        assert demo["false_reject_rate"] == 0.5 and demo["confirmed_ng_rate"] == 0.5 and demo["missed_defect"] == 1
        assert stats["other"]["reviewed_ng"] == 0 and stats["other"]["false_reject_rate"] is None
    finally:
        db_engine.dispose()
