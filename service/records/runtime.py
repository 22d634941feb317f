"""The audit trail as the app runs it: settings → database (migrated) + archive + recorder + push.

The app calls three things: `await Records.start(settings, metrics)` in its lifespan, `await
records.record_prediction(...)` in the predict handler before it answers, `await records.stop()` at
shutdown. With `BRIDGENET_AUDIT=off` the same object exists and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine

from service.cancellation import cancel_until_done, in_thread
from service.config import Settings
from service.metrics import Metrics
from service.push.destinations import Destination, MqttDestination, WebhookDestination
from service.push.dispatcher import Bounds, Dispatcher, requeue
from service.records.archive import Archive
from service.records.database import create_db_engine, database_url, migrate
from service.records.store import (
    DEFAULT_DECISION_RULE,
    DecisionRecord,
    DuplicateRequestError,
    Evidence,
    Recorder,
    RecordOutcome,
)

log = logging.getLogger(__name__)

# The outbox rows of the PLC interface (service.plc.handshake reads them; it deletes one when acknowledged).
PLC_DESTINATION = "opcua"

PRUNE_EVERY_S = 3600.0
# With several workers each archive view misses the others' files between two counts of the folder.
ARCHIVE_RESYNC_S = 30.0
GB = 1024**3


def destinations_from(settings: Settings) -> list[Destination]:
    out: list[Destination] = []
    if settings.mqtt_url:
        out.append(
            MqttDestination(
                settings.mqtt_url,
                settings.mqtt_topic,
                username=settings.mqtt_username,
                password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
                ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                secret=settings.mqtt_secret.get_secret_value() if settings.mqtt_secret else None,
            )
        )
    if settings.webhook_url:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        out.append(WebhookDestination(settings.webhook_url, secret))
    return out


def decision_from_answer(
    answer: Mapping[str, Any],
    *,
    model_sha256: str,
    received_at: datetime | None = None,
    client: str | None = None,
    meas_id: str | None = None,
) -> DecisionRecord:
    """A record from the predict answer (its JSON form). `received_at` defaults to now − timings_ms.total.
    The rule comes from the answer's `decision.rule` (an answer recorded before that field: `decision_rule`,
    else the score rule); `regions` from the answer when it carries them."""
    timings = {k: float(v) for k, v in answer["timings_ms"].items()}
    if received_at is None:
        received_at = datetime.now(UTC) - timedelta(milliseconds=timings.get("total", 0.0))
    return DecisionRecord(
        request_id=answer["request_id"],
        part_id=answer.get("part_id"),
        received_at=received_at,
        model=answer["model"]["name"],
        model_version=answer["model"]["version"],
        model_sha256=model_sha256,
        threshold=float(answer["threshold"]),
        threshold_source=str(answer["threshold_source"]),
        score=float(answer["score"]),
        is_anomalous=bool(answer["is_anomalous"]),
        defect_area_fraction=float(answer.get("defect_area_fraction", 0.0)),
        provider=str(answer["provider"]),
        timings_ms=timings,
        decision_rule=str(
            (answer.get("decision") or {}).get("rule") or answer.get("decision_rule") or DEFAULT_DECISION_RULE
        ),
        regions=tuple(answer.get("regions") or ()),
        client=client,
        meas_id=meas_id,
        verdict=answer.get("verdict"),
        recipe=(answer.get("recipe") or {}).get("id"),
        recipe_version=(answer.get("recipe") or {}).get("version"),
    )


class Records:
    """The app's handle on records and push; `recorder` is None when the audit trail is off."""

    def __init__(
        self,
        recorder: Recorder | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.recorder = recorder
        self.dispatcher = dispatcher
        self._pruner: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        # Called (from the writer's thread) after a commit that queued push: the dispatcher, the PLC handshake.
        self.commit_listeners: list[Callable[[], None]] = [dispatcher.wake] if dispatcher is not None else []

    @property
    def enabled(self) -> bool:
        return self.recorder is not None

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics) -> Records:
        """Open (and migrate) the database, prune expired evidence, start push. Raises SchemaTooNewError
        when the database is newer than this service: start-up must stop there."""
        if settings.audit == "off":
            log.warning("BRIDGENET_AUDIT=off: predictions are not recorded, archived or pushed")
            return cls()
        url = settings.database_url.get_secret_value() if settings.database_url else None
        db_engine = create_db_engine(database_url(settings.data_dir, url))
        revision = await asyncio.to_thread(migrate, db_engine)
        archive = None
        if settings.archive != "none":
            archive = Archive(settings.data_dir / "archive", int(settings.archive_max_gb * GB))
        destinations = destinations_from(settings)
        bounds = Bounds(
            max_age=timedelta(hours=settings.push_max_age_hours),
            max_backlog=settings.push_max_backlog,
            max_dead_letters=settings.push_max_dead_letters,
        )
        # SQLite: the lock files sit beside the database's default place (every worker sees the same data_dir).
        lock_dir = None if db_engine.dialect.name == "postgresql" else settings.data_dir
        dispatcher = (
            Dispatcher(db_engine, destinations, metrics.records, bounds=bounds, lock_dir=lock_dir)
            if destinations
            else None
        )
        recorder = Recorder(
            db_engine,
            archive=archive,
            archive_policy=settings.archive,
            retention=timedelta(days=settings.retention_days),
            destinations=tuple(d.name for d in destinations) + ((PLC_DESTINATION,) if settings.opcua_url else ()),
            push_on=settings.push_on,
            every_result=(PLC_DESTINATION,),  # the PLC waits for a verdict on every part, OK ones too
            metrics=metrics.records,
        )
        records = cls(recorder, dispatcher)
        recorder.on_commit = records._committed
        await asyncio.to_thread(recorder.prune)
        await asyncio.to_thread(recorder.sweep_orphans)
        if dispatcher is not None:
            await dispatcher.start()
        records._pruner = asyncio.create_task(records._prune_periodically(), name="evidence-retention")
        if archive is not None and settings.workers > 1:
            records._resync = asyncio.create_task(records._resync_periodically(archive), name="archive-size")
        log.info(
            "recording to %s (schema %s), archive=%s, push to %s",
            db_engine.url.render_as_string(hide_password=True),
            revision,
            settings.archive,
            [d.name for d in destinations] or "nowhere",
        )
        return records

    def _committed(self) -> None:
        for listener in self.commit_listeners:
            listener()

    async def stop(self) -> None:
        await cancel_until_done(self._pruner, self._resync)
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.recorder is not None:
            self.recorder.db_engine.dispose()

    async def _prune_periodically(self) -> None:
        assert self.recorder is not None
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            try:
                await in_thread(self.recorder.prune)
                await in_thread(self.recorder.sweep_orphans)
            except Exception:  # retention must not end for good over one failed pass
                log.exception("evidence retention pass failed")

    async def _resync_periodically(self, archive: Archive) -> None:
        while True:
            await asyncio.sleep(ARCHIVE_RESYNC_S)
            try:
                size = await in_thread(archive.resync)
            except OSError:  # counted again at the next pass
                log.exception("counting the evidence archive failed")
                continue
            if self.recorder is not None and self.recorder.metrics is not None:
                self.recorder.metrics.archive_bytes.set(size)

    async def refuse_recorded(self, request_id: str) -> None:
        """Raise store.DuplicateRequestError when `request_id` has a record already (store.RecordError when
        the database cannot say): checked before any prediction work, so a repeated id costs no scoring."""
        if self.recorder is not None and await asyncio.to_thread(self.recorder.exists, request_id):
            raise DuplicateRequestError(f"request id {request_id!r} has a record already")

    async def record_prediction(
        self,
        answer: Mapping[str, Any],
        *,
        rgb: bytes,
        xyz: bytes,
        anomaly_map: np.ndarray,
        model_sha256: str,
        client: str | None = None,
        received_at: datetime | None = None,
        meas_id: str | None = None,
    ) -> RecordOutcome | None:
        """Record one answered prediction (JSON form of the predict answer) with its evidence; returns once
        committed. `model_sha256`: of the model file that scored the part, as the engine verified it at load
        (not re-read from disk: after a hot reload the folder may already hold another version).
        Raises store.RecordError when the record cannot be written. None when audit is off."""
        if self.recorder is None:
            return None
        decision = decision_from_answer(
            answer, model_sha256=model_sha256, received_at=received_at, client=client, meas_id=meas_id
        )
        return await asyncio.to_thread(self.recorder.record, decision, Evidence(rgb, xyz, anomaly_map))

    def requeue_dead_letters(self, destination: str | None = None) -> dict[str, int]:
        """Put the dead letters of `destination` (or of every configured one) back into the outbox and wake
        the dispatcher (blocking). Dead letters of a destination no longer configured stay."""
        if self.recorder is None:
            return {}
        names = self.recorder.destinations if destination is None else (destination,)
        moved = requeue(self.recorder.db_engine, [n for n in names if n in self.recorder.destinations])
        if self.dispatcher is not None and any(moved.values()):
            self.dispatcher.wake()
        return moved

    def status(self) -> dict[str, Any]:
        """Audit trail and push state for the status endpoint (blocking: a couple of small queries)."""
        if self.recorder is None:
            return {"audit": "off", "database": None, "archive": None, "push": {}}
        recorder = self.recorder
        db_engine: Engine = recorder.db_engine
        archive = recorder.archive
        return {
            "audit": "on",
            "database": db_engine.dialect.name,
            "archive": None
            if archive is None
            else {"policy": recorder.archive_policy, "bytes": archive.size_bytes, "max_bytes": archive.max_bytes},
            "push": recorder.backlog(),
        }
