"""The records database: SQLite (WAL) under the data directory by default, PostgreSQL when a URL is given;
its schema is brought to this service's Alembic head at start-up, and a newer schema is refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, text

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE = "records.db"
# Any fixed number: several replicas starting at once on one PostgreSQL migrate one after the other.
_PG_MIGRATION_LOCK = 0x42524E31


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer service version; this one must not write to it."""


def database_url(data_dir: Path, url: str | None) -> str:
    """`url` when given, else SQLite in `data_dir` (created)."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the results API) never block the writer. FULL: every commit is fsync'd before it
    # returns, so a record whose answer went out survives a power cut (NORMAL may lose the last commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """A SQLAlchemy engine for `url`; SQLite gets WAL mode and a busy timeout so concurrent writers wait, not fail."""
    if url.startswith("sqlite"):
        db_engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(db_engine, "connect", _sqlite_pragmas)
        return db_engine
    # pool_pre_ping: a PostgreSQL restart must not fail the next prediction's record on a dead connection.
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(db_engine: Engine) -> str | None:
    with db_engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(db_engine: Engine) -> str:
    """Upgrade the schema to this service's head; return the revision. Raise SchemaTooNewError when the
    database carries a revision this service does not know (a newer service migrated it)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db_engine.begin() as conn:
        if db_engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()
        script = _script()
        if current is not None:
            try:
                script.get_revision(current)
            except CommandError:
                raise SchemaTooNewError(
                    f"the records database ({db_engine.url.render_as_string(hide_password=True)}) has schema "
                    f"revision {current!r}, which this service does not know (its newest is "
                    f"{script.get_current_head()!r}): a newer BridgeNet version migrated it. Run that version, "
                    "or point BRIDGENET_DATA_DIR / BRIDGENET_DATABASE_URL at another database."
                ) from None
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    head = head_revision()
    if current != head:
        log.info("records database migrated from %s to %s", current, head)
    return head
