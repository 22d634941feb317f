"""The evidence archive: files named by the SHA-256 of their bytes under `<data_dir>/archive/ab/<sha256>`.

Content addressing makes a write idempotent (the same upload twice is one file) and lets a record prove
which bytes it judged. The archive only stores and deletes files and keeps their total size; which
evidence to prune is the recorder's choice (it knows verdicts and ages).

A file is "pending" from `put` until the recorder `settle`s it (its record committed or failed): the
recorder's clean-up and its orphan sweep never delete a pending file, since a record about to commit may
name it. Renames and new folders are made durable by an fsync of the directory that holds them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class ArchiveError(OSError):
    """Evidence could not be stored (no room under the size limit, disk full, permissions)."""


_DIGEST = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable (a rename or a new file in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Archive:
    """Content-addressed files under `root`, at most `max_bytes` in total. Thread-safe."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._size = self._measure()

    def _measure(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("??/*") if p.is_file())

    @property
    def size_bytes(self) -> int:
        return self._size

    def resync(self) -> int:
        """Count the folder again (other processes write to it too: several workers); the new size. Writes
        during the count may be missed or counted twice until the next one."""
        measured = self._measure()
        with self._lock:
            self._size = measured
        return measured

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has_room(self, nbytes: int) -> bool:
        return self._size + nbytes <= self.max_bytes

    def put(self, data: bytes) -> str:
        """Store `data` (durably: the file and its directory fsync'd) and return its sha256, pending until
        `settle`d; raise ArchiveError when it cannot."""
        digest = sha256_hex(data)
        target = self.path(digest)
        with self._lock:
            if target.is_file():
                self._pending[digest] += 1
                return digest
            if not self.has_room(len(data)):
                raise ArchiveError(
                    f"the evidence archive is full ({self._size:,} of {self.max_bytes:,} bytes; "
                    "BRIDGENET_ARCHIVE_MAX_GB)"
                )
            tmp = target.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True)
                    fsync_dir(target.parent.parent)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)  # readers never see a half-written file
                fsync_dir(target.parent)  # the rename itself survives a power cut
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise ArchiveError(f"cannot write evidence under {self.root}: {exc}") from exc
            self._size += len(data)
            self._pending[digest] += 1
        return digest

    def settle(self, digests: list[str]) -> None:
        """End the pending state that `put` gave each of `digests` (once per put)."""
        with self._lock:
            for digest in digests:
                self._pending[digest] -= 1
                if self._pending[digest] <= 0:
                    del self._pending[digest]

    def discard(self, sha256: str, referenced: Callable[[str], bool]) -> bool:
        """Delete the file unless it is pending or `referenced(sha256)` says a record names it; the check and
        the deletion happen under the lock `put` takes, so no put can slip in between. True if deleted."""
        with self._lock:
            if self._pending[sha256] > 0 or referenced(sha256):
                return False
            return self._unlink(sha256) is not None

    def files(self, older_than_s: float = 0.0) -> Iterator[str]:
        """The digests of the stored files last written more than `older_than_s` ago (the name is the digest)."""
        cutoff = time.time() - older_than_s
        for path in self.root.glob("??/*"):
            if _DIGEST.fullmatch(path.name) is None:
                continue  # a temporary file of a write in progress
            try:
                if path.stat().st_mtime <= cutoff:
                    yield path.name
            except FileNotFoundError:
                continue

    def _unlink(self, sha256: str) -> int | None:
        """Remove one file (lock held); its size, or None when it was not there."""
        target = self.path(sha256)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return None
        self._size -= size
        return size
