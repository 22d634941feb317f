"""Durability of a record and its evidence across a power cut: SQLite commits are fsync'd (synchronous
FULL), and the archive fsyncs the directory after each rename so the file's name survives too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from service.records.archive import Archive
from service.records.database import create_db_engine, database_url


def test_sqlite_commits_are_fsynced(tmp_path: Path) -> None:
    engine = create_db_engine(database_url(tmp_path, None))
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL (NORMAL is 1)
    engine.dispose()


def test_archive_fsyncs_the_directory_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real os.fsync runs on a real file system; the spy only notes what each call synced."""
    synced: list[tuple[bool, int]] = []  # (is a directory, inode), in call order
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    root = tmp_path / "archive"
    archive = Archive(root, 10**6)
    digest = archive.put(b"evidence of part 1")
    target = archive.path(digest)
    folder = target.parent
    file_sync = (False, target.stat().st_ino)
    assert file_sync in synced  # the bytes
    assert synced.index((True, folder.stat().st_ino)) > synced.index(file_sync)  # then the rename into folder
    assert (True, root.stat().st_ino) in synced  # the new folder's own entry in the archive root

    synced.clear()
    second = archive.path(archive.put(b"evidence of part 1, other bytes"))
    if second.parent == folder:  # same folder: no new folder entry to sync, only the rename
        assert (True, root.stat().st_ino) not in synced
    assert synced[-1] == (True, second.parent.stat().st_ino)
