"""Reviews of recorded decisions by quality staff (the review station, service.ui): table and queries.

A review says what a person found when checking a part by hand: "confirmed" (an NG or REVIEW part is
defective), "false_reject" (an NG or REVIEW part is good) or "missed_defect" (an OK part is defective),
with an optional defect type and comment, who and when. Reviews are appended, never changed: a second
review of the same part overrides the first for the statistics (the latest counts) and both stay as the
audit trail.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args

from sqlalchemy import DateTime, Engine, ForeignKey, Index, Select, String, Text, case, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.records.store import ResultFilter, _filtered, utc
from service.records.tables import _ID, Base, DecisionRow

Outcome = Literal["confirmed", "false_reject", "missed_defect"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# Which verdict each outcome can overrule or confirm: a reviewer cannot "confirm" an OK part.
OUTCOME_VERDICT: dict[Outcome, bool] = {"confirmed": True, "false_reject": True, "missed_defect": False}
MAX_OPERATOR, MAX_DEFECT_TYPE, MAX_COMMENT = 64, 64, 2000
DEFECT_TYPE = re.compile(r"[A-Za-z0-9_-]+")  # it names a folder of the training data (import-reviews)
LIST_LIMIT = 500

# Any select over the decisions table (the reviews filters add WHERE clauses, whatever the columns).
_Q = TypeVar("_Q", bound=Select)


class ReviewRow(Base):
    """One review of one decision. `id` orders reviews of the same part (the latest counts)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), ForeignKey("decisions.request_id"))
    outcome: Mapped[str] = mapped_column(String(16))
    defect_type: Mapped[str | None] = mapped_column(String(MAX_DEFECT_TYPE))
    comment: Mapped[str | None] = mapped_column(Text)
    operator: Mapped[str] = mapped_column(String(MAX_OPERATOR))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_reviews_request_id", "request_id", "id"),)


class ReviewError(ValueError):
    """A review that cannot be stored as asked (wrong outcome for the verdict, bad field)."""


class UnknownDecisionError(LookupError):
    """No decision with that request id."""


def review_view(row: ReviewRow) -> dict[str, Any]:
    return {
        "outcome": row.outcome,
        "defect_type": row.defect_type,
        "comment": row.comment,
        "operator": row.operator,
        "created": utc(row.created_at).isoformat(),
    }


def _clean(value: str | None, limit: int, what: str) -> str | None:
    text = (value or "").strip()
    if len(text) > limit:
        raise ReviewError(f"{what} has {len(text)} characters; at most {limit}")
    return text or None


def add_review(
    db_engine: Engine,
    request_id: str,
    outcome: str,
    *,
    operator: str,
    defect_type: str | None = None,
    comment: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store one review and return it (review_view). Raises UnknownDecisionError or ReviewError."""
    if outcome not in OUTCOMES:
        raise ReviewError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    who = _clean(operator, MAX_OPERATOR, "the operator name")
    if who is None:
        raise ReviewError("a review needs the operator's name")
    kind = _clean(defect_type, MAX_DEFECT_TYPE, "the defect type")
    if kind is not None and (outcome == "false_reject" or not DEFECT_TYPE.fullmatch(kind)):
        raise ReviewError(
            "a defect type goes with a confirmed or missed defect and is one word of letters, digits, - or _ "
            f"(it names a folder of the training data), got {kind!r} for {outcome}"
        )
    with Session(db_engine) as session, session.begin():
        decision = session.get(DecisionRow, request_id)
        if decision is None:
            raise UnknownDecisionError(f"no record of request {request_id!r}")
        if decision.is_anomalous != OUTCOME_VERDICT[outcome]:
            verdict = "NG" if decision.is_anomalous else "OK"
            raise ReviewError(
                f"{outcome} does not apply to an {verdict} part: confirmed and false_reject review NG parts, "
                "missed_defect reviews OK parts"
            )
        row = ReviewRow(
            request_id=request_id,
            outcome=outcome,
            defect_type=kind,
            comment=_clean(comment, MAX_COMMENT, "the comment"),
            operator=who,
            created_at=utc(now or datetime.now(UTC)),
        )
        session.add(row)
        session.flush()
        return review_view(row)


def _latest_ids() -> Select[Any]:
    return select(func.max(ReviewRow.id).label("id")).group_by(ReviewRow.request_id)


def latest_reviews(db_engine: Engine, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The latest review of each of `request_ids` that has one."""
    ids = list(request_ids)
    if not ids:
        return {}
    latest = _latest_ids().where(ReviewRow.request_id.in_(ids)).subquery()
    with Session(db_engine) as session:
        rows = session.scalars(select(ReviewRow).join(latest, ReviewRow.id == latest.c.id)).all()
        return {row.request_id: review_view(row) for row in rows}


def review_history(db_engine: Engine, request_id: str) -> list[dict[str, Any]]:
    """Every review of one part, oldest first."""
    with Session(db_engine) as session:
        rows = session.scalars(select(ReviewRow).where(ReviewRow.request_id == request_id).order_by(ReviewRow.id)).all()
        return [review_view(r) for r in rows]


@dataclass(frozen=True)
class PartFilter(ResultFilter):
    """The results API's filters plus reviewed (True) / not yet (False) / either (None)."""

    reviewed: bool | None = None


def _where(query: _Q, f: PartFilter) -> _Q:
    """`query` restricted to the decisions `f` selects (the results API's filters, one definition)."""
    selected = _filtered(f).whereclause
    if selected is not None:
        query = query.where(selected)
    if f.reviewed is not None:
        reviewed = select(ReviewRow.request_id).where(ReviewRow.request_id == DecisionRow.request_id).exists()
        query = query.where(reviewed if f.reviewed else ~reviewed)
    return query


def list_parts(db_engine: Engine, f: PartFilter, *, limit: int = 100, ng_first: bool = True) -> list[dict[str, Any]]:
    """Rows of the review station's list: REVIEW parts first, then NG parts (when asked: they wait for a
    person), then newest first, at most `limit`; each with its latest review (or None)."""
    waiting = case((DecisionRow.verdict == "review", 0), else_=1)
    order = [waiting, DecisionRow.is_anomalous.desc()] if ng_first else []
    query = _where(select(DecisionRow), f).order_by(
        *order, DecisionRow.received_at.desc(), DecisionRow.request_id.desc()
    )
    with Session(db_engine) as session:
        rows = session.scalars(query.limit(max(1, min(limit, LIST_LIMIT)))).all()
        parts: list[dict[str, Any]] = [
            {
                "request_id": r.request_id,
                "part_id": r.part_id,
                "created": utc(r.received_at).isoformat(),
                "model": r.model,
                "model_version": r.model_version,
                "score": r.score,
                "threshold": r.threshold,
                "is_anomalous": r.is_anomalous,
                "verdict": r.verdict,
                "evidence": r.evidence,
            }
            for r in rows
        ]
    reviews = latest_reviews(db_engine, [str(p["request_id"]) for p in parts])
    for part in parts:
        part["review"] = reviews.get(str(part["request_id"]))
    return parts


def counts_per_hour(
    db_engine: Engine, f: PartFilter, *, cache: HourCounts | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """OK and NG counts per UTC hour over the parts `f` selects, oldest hour first (empty hours left out).
    One small COUNT per hour on the received-time index, never the rows themselves; with a `cache`, hours
    that are over are counted once (see HourCounts). Without `f.since` the first hour is the oldest record's."""
    end = utc(f.until) if f.until is not None else utc(now or datetime.now(UTC))
    start = utc(f.since) if f.since is not None else _oldest(db_engine, f)
    if start is None or start >= end:
        return []
    out = []
    hour = _hour(start)
    selects = (str(db_engine.url), replace(f, since=None, until=None))  # what a cached hour is keyed by
    with Session(db_engine) as session:
        while hour < end:
            lo, hi = max(hour, start), min(hour + HOUR, end)
            key = (*selects, hour)
            counted = cache.get(key, now) if cache is not None and lo == hour and hi == hour + HOUR else None
            if counted is None:
                query = _where(
                    select(DecisionRow.is_anomalous, func.count()).group_by(DecisionRow.is_anomalous),
                    replace(f, since=lo, until=hi),
                )
                by_verdict = {bool(ng): int(n) for ng, n in session.execute(query)}
                counted = (by_verdict.get(False, 0), by_verdict.get(True, 0))
                if cache is not None and lo == hour and hi == hour + HOUR:
                    cache.put(key, counted, reviewed=f.reviewed is not None, hour_end=hi, now=now)
            if counted != (0, 0):
                out.append({"hour": hour.isoformat(), "ok": counted[0], "ng": counted[1]})
            hour += HOUR
    return out


HOUR = timedelta(hours=1)


def _hour(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def _oldest(db_engine: Engine, f: PartFilter) -> datetime | None:
    with Session(db_engine) as session:
        oldest = session.scalar(_where(select(func.min(DecisionRow.received_at)), f))
    return None if oldest is None else utc(oldest)


class HourCounts:
    """Counts of hours that are over, kept so that the list's poll counts only the current hour.

    An hour is final `SETTLE` after its end (a record's time is when its request arrived, at most a
    request timeout before it is written). Counts that depend on reviews (the `reviewed` filter) change as
    people review, so they are kept `reviewed_ttl_s` only. At most `max_entries`, the oldest entry dropped
    first. Thread-safe: the UI's handlers run in worker threads."""

    SETTLE = timedelta(minutes=5)

    def __init__(self, max_entries: int = 50_000, reviewed_ttl_s: float = 60.0) -> None:
        self.max_entries = max_entries
        self.reviewed_ttl_s = reviewed_ttl_s
        self._entries: OrderedDict[Hashable, tuple[tuple[int, int], datetime | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, now: datetime | None = None) -> tuple[int, int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            counted, expires = entry
            if expires is not None and utc(now or datetime.now(UTC)) >= expires:
                del self._entries[key]
                return None
            return counted

    def put(
        self,
        key: Hashable,
        counted: tuple[int, int],
        *,
        reviewed: bool,
        hour_end: datetime,
        now: datetime | None = None,
    ) -> None:
        current = utc(now or datetime.now(UTC))
        if hour_end + self.SETTLE > current:
            return  # records of this hour may still come
        expires = current + timedelta(seconds=self.reviewed_ttl_s) if reviewed else None
        with self._lock:
            self._entries[key] = (counted, expires)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def review_stats(
    db_engine: Engine, *, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Per model: parts, NG parts (REVIEW ones included: not accepted), reviewed NG parts and their latest
    outcomes, and the two numbers a quality engineer reports: false-reject rate (false rejects / reviewed
    NG) and confirmed-NG rate (confirmed / reviewed NG); plus missed defects found among reviewed OK parts.
    Rates are None while no NG part of the model is reviewed. The review band's share: `review` parts the
    band sent to people, `review_reviewed` of them reviewed, and their outcomes `review_confirmed` and
    `review_false_reject`."""
    f = PartFilter(since=since, until=until)
    parts = _where(
        select(DecisionRow.model, DecisionRow.verdict, func.count()).group_by(DecisionRow.model, DecisionRow.verdict),
        f,
    )
    latest = _latest_ids().subquery()
    outcomes = _where(
        select(DecisionRow.model, DecisionRow.verdict, ReviewRow.outcome, func.count())
        .join(ReviewRow, ReviewRow.request_id == DecisionRow.request_id)
        .join(latest, ReviewRow.id == latest.c.id)
        .group_by(DecisionRow.model, DecisionRow.verdict, ReviewRow.outcome),
        f,
    )
    keys = ("parts", "ng", "review", *OUTCOMES, "review_reviewed", "review_confirmed", "review_false_reject")
    models: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    with Session(db_engine) as session:
        for model, verdict, count in session.execute(parts):
            models[model]["parts"] += count
            if verdict != "ok":
                models[model]["ng"] += count
            if verdict == "review":
                models[model]["review"] += count
        for model, verdict, outcome, count in session.execute(outcomes):
            models[model][outcome] += count
            if verdict == "review":
                models[model]["review_reviewed"] += count
                if outcome in ("confirmed", "false_reject"):
                    models[model][f"review_{outcome}"] += count
    out = []
    for model, m in sorted(models.items()):
        reviewed_ng = m["confirmed"] + m["false_reject"]
        out.append(
            {
                "model": model,
                **m,
                "reviewed_ng": reviewed_ng,
                "false_reject_rate": m["false_reject"] / reviewed_ng if reviewed_ng else None,
                "confirmed_ng_rate": m["confirmed"] / reviewed_ng if reviewed_ng else None,
            }
        )
    return out


@dataclass(frozen=True)
class ScoredPart:
    """One recorded part as a calibration sees it: its score, verdict, version and latest review outcome."""

    request_id: str
    received_at: datetime
    model_version: str
    model_sha256: str
    score: float
    is_anomalous: bool
    outcome: str | None  # the latest review's, None when not reviewed


def scored_parts(db_engine: Engine, f: ResultFilter, *, limit: int) -> list[ScoredPart]:
    """The newest `limit` parts that `f` selects, newest first, each with its latest review's outcome (one
    query: decisions left-joined to their latest review)."""
    ids = _latest_ids().subquery()
    latest = select(ReviewRow.request_id, ReviewRow.outcome).join(ids, ReviewRow.id == ids.c.id).subquery()
    query = _where(
        select(
            DecisionRow.request_id,
            DecisionRow.received_at,
            DecisionRow.model_version,
            DecisionRow.model_sha256,
            DecisionRow.score,
            DecisionRow.is_anomalous,
            latest.c.outcome,
        ).outerjoin(latest, latest.c.request_id == DecisionRow.request_id),
        PartFilter(model=f.model, verdict=f.verdict, since=f.since, until=f.until),
    )
    query = query.order_by(DecisionRow.received_at.desc(), DecisionRow.request_id.desc()).limit(limit)
    with Session(db_engine) as session:
        return [
            ScoredPart(r[0], utc(r[1]), r[2], r[3], float(r[4]), bool(r[5]), r[6]) for r in session.execute(query).all()
        ]
