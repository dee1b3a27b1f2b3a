"""The ``keystore`` command: create, list and revoke keys.

Settings come from the environment and .env, as for the app, with the same
Firestore deadline, so a command never hangs. Errors are one line on stderr and
a non-zero exit.
"""

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from keystore.errors import KeyStoreError
from keystore.models import ApiKey, BrokenRow
from keystore.settings import Settings, load_env_file
from keystore.store import ApiKeyStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``90s`` or ``2w`` as a timedelta."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([smhdw])\s*", text)
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a duration; use a positive number and a unit, like 30d, "
            "12h, 45m, 90s or 2w"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other keystore error; --help has the usage.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keystore", description="Manage API keys kept in Firestore.")
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="make a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scope", action="append", default=[], help="a scope to grant (repeatable)"
    )
    create.add_argument(
        "--expires-in", type=parse_duration, help="lifetime, like 30d or 12h"
    )
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")

    revoke = commands.add_parser("revoke", help="delete a key's row")
    revoke.add_argument("id", help="the key id (the middle part of the key)")
    return parser


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _describe(row: ApiKey | BrokenRow) -> dict[str, Any]:
    if isinstance(row, BrokenRow):
        return {"id": row.id, "broken": f"field '{row.field}': {row.problem}"}
    return {
        "id": row.id,
        "name": row.name,
        "scopes": list(row.scopes),
        "disabled": row.disabled,
        "expires_at": _iso(row.expires_at),
        "created_at": _iso(row.created_at),
    }


def _status(row: ApiKey | BrokenRow, now: datetime) -> str:
    if isinstance(row, BrokenRow):
        return f"BROKEN (field '{row.field}': {row.problem})"
    if row.disabled:
        return "disabled"
    return "expired" if row.is_expired(now) else "active"


def _table(rows: Sequence[ApiKey | BrokenRow]) -> str:
    now = datetime.now(UTC)
    lines = [("ID", "NAME", "SCOPES", "EXPIRES", "STATUS")]
    for row in rows:
        if isinstance(row, BrokenRow):
            lines.append((row.id, "", "", "", _status(row, now)))
        else:
            expires = _iso(row.expires_at) or "never"
            lines.append(
                (row.id, row.name, ",".join(row.scopes), expires, _status(row, now))
            )
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[4]
        for line in lines
    )


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        if args.command == "create":
            expires_at = (
                datetime.now(UTC) + args.expires_in if args.expires_in else None
            )
            made = await store.create(
                name=args.name, scopes=args.scope, expires_at=expires_at
            )
            if args.json:
                print(json.dumps({**_describe(made.record), "key": made.key}))
            else:
                print(f"Created key {made.record.id} ({made.record.name}).")
                print("The key is shown this once; store it now:")
                print(made.key)
        elif args.command == "list":
            rows = await store.list_keys()
            if args.json:
                print(json.dumps([_describe(row) for row in rows]))
            else:
                print(_table(rows))
        elif args.command == "revoke":
            await store.revoke(args.id)
            print(f"Revoked key {args.id}.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    # The store logs its warnings; the CLI says what went wrong in one line instead.
    logging.basicConfig(level=logging.ERROR)
    try:
        load_env_file()
        asyncio.run(_run(args, Settings.from_env()))
    except KeyStoreError as exc:
        print(f"keystore: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
