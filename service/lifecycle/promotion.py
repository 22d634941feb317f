"""Promotion and rollback of a model folder's versions, and their audit records.

Promoting swaps files inside the model folder: the active version's files move to `history/<version>/` and
the chosen version's files move to the top, where the engine (on the reload that follows) and a restart
find them. `history/PREVIOUS` names the version that was active before, for rollback. Each step is a rename
within one file system; were the service to die between the two renames of the top files, the model file
and manifest would disagree and the load would refuse the folder by its sha256 check, never serve a mix.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, insert, select

from service.lifecycle.versions import (
    HISTORY_DIR,
    VersionConflictError,
    VersionInfo,
    active_version,
    stored_version,
)
from service.manifest import MANIFEST_FILE, MODEL_FILE
from service.records.tables import ModelEventRow

PREVIOUS_FILE = "PREVIOUS"
Action = Literal["promote", "rollback", "save"]


@dataclass(frozen=True)
class Switch:
    """What a promotion or rollback changed on disk (a save: the version stored beside the active one)."""

    action: Action
    before: VersionInfo
    after: VersionInfo


def previous_version(folder: Path) -> str | None:
    """The version that was active before the last promotion or rollback, when one is recorded."""
    path = folder / HISTORY_DIR / PREVIOUS_FILE
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def _write_previous(folder: Path, version: str) -> None:
    path = folder / HISTORY_DIR / PREVIOUS_FILE
    tmp = path.with_name(f".{PREVIOUS_FILE}.tmp")
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, path)


def activate(folder: Path, version: str, action: Action = "promote") -> Switch:
    """Make the stored `version` the folder's active one and archive the active one under history/.
    VersionNotFoundError when it is not stored, VersionConflictError when it is already active or the
    active version's archive folder is taken by other files."""
    before = active_version(folder)
    if version == before.version:
        raise VersionConflictError(f"version {version!r} of {folder.name!r} is already active")
    target = stored_version(folder, version)
    archive = folder / HISTORY_DIR / before.version
    if archive.exists():
        raise VersionConflictError(
            f"{archive} already exists but does not hold the active version's files; move it away first"
        )
    staging = folder / HISTORY_DIR / f".{before.version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (MODEL_FILE, MANIFEST_FILE):
        shutil.copy2(folder / name, staging / name)
    os.replace(staging, archive)
    for name in (MODEL_FILE, MANIFEST_FILE):
        os.replace(target.folder / name, folder / name)
        # The engine spots a changed folder by modification time and size: make sure this counts as a change.
        os.utime(folder / name)
    shutil.rmtree(target.folder)
    _write_previous(folder, before.version)
    after = VersionInfo(target.version, folder, target.onnx_sha256, target.created, target.calibration)
    return Switch(action, VersionInfo(**{**before.__dict__, "folder": archive}), after)


def rollback_target(folder: Path) -> str:
    """The version a rollback returns to; VersionConflictError when none is recorded."""
    previous = previous_version(folder)
    if previous is None:
        raise VersionConflictError(f"model {folder.name!r} has no previous version to roll back to")
    return previous


def record_event(db_engine: Engine, model: str, switch: Switch, actor: str, reason: str) -> dict[str, Any]:
    """Write the audit record of `switch`; returns it as listed."""
    at = datetime.now(UTC)
    row: dict[str, Any] = {
        "model": model,
        "action": switch.action,
        "at": at,
        "actor": actor,
        "from_version": switch.before.version,
        "from_sha256": switch.before.onnx_sha256,
        "to_version": switch.after.version,
        "to_sha256": switch.after.onnx_sha256,
        "reason": reason,
    }
    with db_engine.begin() as conn:
        conn.execute(insert(ModelEventRow).values(**row))
    return {**row, "at": at.isoformat()}


_EVENT_FIELDS = ("model", "action", "actor", "from_version", "from_sha256", "to_version", "to_sha256", "reason")


def list_events(db_engine: Engine, model: str, limit: int = 100) -> list[dict[str, Any]]:
    """The model's promotions, rollbacks and saved calibrations, newest first."""
    query = select(ModelEventRow).where(ModelEventRow.model == model).order_by(ModelEventRow.id.desc()).limit(limit)
    with db_engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            **{k: row[k] for k in _EVENT_FIELDS},
            "at": _aware(row["at"]).isoformat(),
        }
        for row in rows
    ]


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
