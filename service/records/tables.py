"""The database tables (SQLAlchemy 2): one row per answered prediction, one outbox row per push, and the
dead letters: pushes that were refused for good or fell out of the outbox's bounds.

The Alembic migrations in `service/records/migrations/versions/` create exactly these; a change here needs
a new migration (tests/records/test_migrations.py compares the two).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    """One answered /v1/predict. `request_id` is the key (a reviews table will refer to it)."""

    __tablename__ = "decisions"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    part_id: Mapped[str | None] = mapped_column(String(256), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    threshold_source: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    is_anomalous: Mapped[bool] = mapped_column(Boolean, index=True)
    # "ok", "review" (in the review band: a person decides; is_anomalous is true) or "ng".
    verdict: Mapped[str] = mapped_column(String(8), index=True)
    # The recipe whose rules decided (service.recipes) and its version; null: the model's own rules.
    recipe: Mapped[str | None] = mapped_column(String(128), index=True)
    recipe_version: Mapped[str | None] = mapped_column(String(64))
    defect_area_fraction: Mapped[float] = mapped_column(Float)
    decision_rule: Mapped[str] = mapped_column(String(256))
    regions: Mapped[list[Any]] = mapped_column(JSON)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    provider: Mapped[str] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64))
    # Evidence: "archived", "not_kept" (the archive policy skipped this part) or "failed" (write error).
    evidence: Mapped[str] = mapped_column(String(16))
    # Indexed: deleting an evidence file first asks whether any record names it, under the archive's lock.
    rgb_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    xyz_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    map_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    # The shadow candidate's answer on the same part (service.lifecycle.shadow), added after the record was
    # written; null when no candidate shadowed the model or the part was skipped.
    shadow_version: Mapped[str | None] = mapped_column(String(64))
    shadow_score: Mapped[float | None] = mapped_column(Float)
    shadow_threshold: Mapped[float | None] = mapped_column(Float)
    shadow_is_anomalous: Mapped[bool | None] = mapped_column(Boolean)

    # Newest-first listing and keyset pagination walk this index.
    __table_args__ = (Index("ix_decisions_received", "received_at", "request_id"),)


class OutboxRow(Base):
    """A result waiting to be pushed to one destination; deleted once delivered. `id` orders delivery."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(128), ForeignKey("decisions.request_id"))
    # The exact bytes that go out (JSON text), frozen at record time: a retry sends the same message.
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbox_destination_id", "destination", "id"),)


class DeadLetterRow(Base):
    """A push taken out of the outbox: refused by its destination (a 4xx answer), older than the outbox's
    age bound, or beyond its count bound. Kept with its frozen payload until re-queued
    (POST /v1/admin/push/retry) or pruned past `push_max_dead_letters`."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(128), ForeignKey("decisions.request_id"))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when it entered the outbox
    dead_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # "refused" (the destination said no), "expired" (past push_max_age_hours), "overflow" (push_max_backlog).
    reason: Mapped[str] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_dead_letters_destination_id", "destination", "id"),)


class ModelEventRow(Base):
    """A promotion or rollback of a model's version, or a calibration saved as a new version: who, when, from
    which version to which, and why."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))  # "promote", "rollback" or "save"
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    from_version: Mapped[str] = mapped_column(String(64))
    from_sha256: Mapped[str] = mapped_column(String(64))
    to_version: Mapped[str] = mapped_column(String(64))
    to_sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_model_events_model_id", "model", "id"),)
