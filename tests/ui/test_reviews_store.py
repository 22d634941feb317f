"""service.records.reviews on SQLite and on a real PostgreSQL cluster (the records tests' fixtures): the
same queries must give the same answers on both."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.records.database import create_db_engine, head_revision, migrate
from service.records.reviews import (
    HourCounts,
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
        assert migrate(db_engine) == head_revision()
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


def test_counts_of_hours_that_are_over_are_counted_once(db_url: str) -> None:  # noqa: F811
    """With a cache, a poll counts only the hours still open: an over hour's count is the cached one (a
    record written into it later does not change it), the current hour is counted each time, and counts
    under the reviewed filter expire with their time to live."""
    db_engine = create_db_engine(db_url)
    try:
        migrate(db_engine)
        recorder = Recorder(db_engine)
        now = T0 + timedelta(hours=3, minutes=30)
        for i, minutes in enumerate((10, 70, 75, 200)):  # hours 0, 1, 1 and 3 (the current one)
            recorder.record(decision(f"c-{i}", ng=i == 1, received_at=T0 + timedelta(minutes=minutes)))
        cache = HourCounts(reviewed_ttl_s=60)
        window = PartFilter(since=T0, until=now)
        first = counts_per_hour(db_engine, window, cache=cache, now=now)
        assert first == [
            {"hour": T0.isoformat(), "ok": 1, "ng": 0},
            {"hour": (T0 + timedelta(hours=1)).isoformat(), "ok": 1, "ng": 1},
            {"hour": (T0 + timedelta(hours=3)).isoformat(), "ok": 1, "ng": 0},
        ]
        recorder.record(decision("late", ng=True, received_at=T0 + timedelta(minutes=80)))  # hour 1, over
        recorder.record(decision("now", ng=True, received_at=T0 + timedelta(minutes=205)))  # hour 3, open
        second = counts_per_hour(db_engine, window, cache=cache, now=now)
        assert second[1] == first[1]  # from the cache
        assert second[2] == {"hour": (T0 + timedelta(hours=3)).isoformat(), "ok": 1, "ng": 1}
        assert counts_per_hour(db_engine, window, now=now)[1]["ng"] == 2  # uncached: the truth

        unreviewed = PartFilter(since=T0, until=now, reviewed=False)
        assert counts_per_hour(db_engine, unreviewed, cache=cache, now=now)[1]["ng"] == 2
        add_review(db_engine, "late", "confirmed", operator="Ana")
        assert counts_per_hour(db_engine, unreviewed, cache=cache, now=now)[1]["ng"] == 2  # within its TTL
        later = now + timedelta(seconds=61)
        assert counts_per_hour(db_engine, unreviewed, cache=cache, now=later)[1]["ng"] == 1
    finally:
        db_engine.dispose()
