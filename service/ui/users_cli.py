"""`python -m service users add|remove|list`: manage the review station's users file.

Passwords are read from a prompt (twice) on a terminal, else from the first line of stdin; never from the
command line, where other users of the host would see them in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from service.ui.users import ROLES, UsersError, add_user, read_users, remove_user


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service users", description=__doc__)
    parser.add_argument(
        "--file", type=Path, help="the users file (default: BRIDGENET_USERS_FILE, else BRIDGENET_DATA_DIR/users.json)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user (or replace one's password and role with --replace)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer", help="default: %(default)s")
    add.add_argument("--replace", action="store_true", help="set a new password and role for an existing user")
    remove = commands.add_parser("remove", help="remove a user; their sessions end at their next request")
    remove.add_argument("name")
    commands.add_parser("list", help="names, roles and creation times as JSON (no hashes)")
    return parser


def _default_path() -> Path:
    from service.config import get_settings

    return get_settings().users_path


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UsersError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        path: Path = args.file or _default_path()
        if args.command == "add":
            user = add_user(path, args.name, args.role, _read_password(), replace=args.replace)
            print(f"{'replaced' if args.replace else 'added'} {user.name} ({user.role}) in {path}")
        elif args.command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name} from {path}")
        else:
            print(json.dumps([u.public() for u in read_users(path).values()], indent=2))
    except (UsersError, ValueError, OSError) as exc:  # SettingsError is a ValueError: it names the variable
        print(f"users: {exc}", file=sys.stderr)
        return 2
    return 0
