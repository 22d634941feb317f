"""The review station's users: a JSON file of names, roles and salted Argon2id password hashes.

Managed with `python -m service users add|remove|list` (service.ui.users_cli); the service re-reads the
file when it changes, so a user added or removed counts at once (a removed user's sessions end at their
next request). The file is written whole to a temporary name and renamed over the old one, mode 0600.

Roles: `reviewer` sees the station and records reviews; `viewer` sees it and cannot review; `admin` reviews
too, and commissions, saves and promotes model versions on the station's model page.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

ROLES = ("reviewer", "viewer", "admin")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# Names are recorded with every review and shown on pages: plain, short tokens (e-mail style allowed).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
FILE_VERSION = 1

# argon2-cffi's defaults (RFC 9106's second recommendation: Argon2id, 3 passes, 64 MiB): about 50 ms a
# check, slow enough that a stolen file costs a guesser dearly, fast enough for a login.
_hasher = PasswordHasher()
# Checked against for unknown names, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UsersError(ValueError):
    """A bad name, role, password or users file; the message says which and what was expected."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str
    created: str

    def public(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "created": self.created}


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise UsersError(
            f"user name {name!r}: expected 1 to 64 letters, digits or . _ @ - (starting with a letter or digit)"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UsersError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsersError(f"the password has {len(password)} characters; expected {MIN_PASSWORD} to {MAX_PASSWORD}")
    return password


def _parse(path: Path, text: str) -> dict[str, User]:
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise UsersError(f"{path}: expected a users file of version {FILE_VERSION}")
        return {
            name: User(check_name(name), check_role(row["role"]), str(row["hash"]), str(row["created"]))
            for name, row in data["users"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise UsersError(f"{path}: not a users file ({type(exc).__name__}: {exc})") from None


def read_users(path: Path) -> dict[str, User]:
    """The users in `path`; an absent file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return _parse(path, text)


def write_users(path: Path, users: dict[str, User]) -> None:
    """Replace `path` by `users` in one rename (a reader sees the old file or the new one, never half)."""
    body: dict[str, Any] = {
        "version": FILE_VERSION,
        "users": {u.name: {"role": u.role, "hash": u.password_hash, "created": u.created} for u in users.values()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_user(path: Path, name: str, role: str, password: str, *, replace: bool = False) -> User:
    """Add `name` (or, with `replace`, set its role and password); raises UsersError."""
    users = read_users(path)
    if check_name(name) in users and not replace:
        raise UsersError(f"user {name!r} exists; use --replace to set a new password or role")
    user = User(name, check_role(role), _hasher.hash(check_password(password)), datetime.now(UTC).isoformat())
    write_users(path, {**users, name: user})
    return user


def remove_user(path: Path, name: str) -> None:
    users = read_users(path)
    if name not in users:
        raise UsersError(f"no user {name!r} in {path}")
    write_users(path, {k: v for k, v in users.items() if k != name})


class UserDirectory:
    """The users file as the service reads it: re-read when its size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._users = read_users(self.path) if stamp is not None else {}
                except (UsersError, OSError) as exc:
                    # A hand-edited file gone wrong: keep the users last read (logged once per change).
                    log.error(
                        "the users file cannot be read, keeping the %d users read before: %s", len(self._users), exc
                    )
            return self._users

    def get(self, name: str) -> User | None:
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs, else None. Takes one hash check's time either way."""
        user = self.get(name)
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password[:MAX_PASSWORD])
        except (VerificationError, InvalidHashError):
            return None
        return user
