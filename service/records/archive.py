"""The evidence archive: files named by the SHA-256 of their bytes under `<data_dir>/archive/ab/<sha256>`.

Content addressing makes a write idempotent (the same upload twice is one file) and lets a record prove
which bytes it judged. The archive only stores and deletes files and keeps their total size; which
evidence to prune is the recorder's choice (it knows verdicts and ages).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class ArchiveError(OSError):
    """Evidence could not be stored (no room under the size limit, disk full, permissions)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Archive:
    """Content-addressed files under `root`, at most `max_bytes` in total. Thread-safe."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size = self._measure()

    def _measure(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("??/*") if p.is_file())

    @property
    def size_bytes(self) -> int:
        return self._size

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has_room(self, nbytes: int) -> bool:
        return self._size + nbytes <= self.max_bytes

    def put(self, data: bytes) -> str:
        """Store `data` (durably: fsync'd) and return its sha256; raise ArchiveError when it cannot."""
        digest = sha256_hex(data)
        target = self.path(digest)
        with self._lock:
            if target.is_file():
                return digest
            if not self.has_room(len(data)):
                raise ArchiveError(
                    f"the evidence archive is full ({self._size:,} of {self.max_bytes:,} bytes; "
                    "BRIDGENET_ARCHIVE_MAX_GB)"
                )
            tmp = target.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)  # readers never see a half-written file
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise ArchiveError(f"cannot write evidence under {self.root}: {exc}") from exc
            self._size += len(data)
        return digest

    def delete(self, sha256: str) -> int:
        """Remove one file; return the bytes freed (0 when it was not there)."""
        target = self.path(sha256)
        with self._lock:
            try:
                size = target.stat().st_size
                target.unlink()
            except FileNotFoundError:
                return 0
            self._size -= size
            return size
