"""The ``keystore`` command: make, list, change, limit, rotate and revoke keys.

Settings come from the environment and .env, as for the app, with the same
Firestore deadline, so a command never hangs. Errors are one line on stderr and
a non-zero exit.
"""

import argparse
import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO

from keystore.cli_args import parser
from keystore.cli_output import (
    describe,
    details,
    iso,
    limit_fields,
    limits_text,
    list_table,
    owner_usage_text,
    print_new,
    print_value,
    status,
    usage_text,
)
from keystore.errors import KeyStoreError, MalformedKey
from keystore.keys import (
    hash_key,
    imported_key_id,
    is_importable,
    new_key,
    parse_key_id,
)
from keystore.models import ApiKey, BrokenRow
from keystore.reports import this_month, to_csv
from keystore.settings import Settings, load_env_file
from keystore.store import ApiKeyStore
from keystore.times import relative, utcnow

Row = ApiKey | BrokenRow


def _expires_at(args: argparse.Namespace) -> datetime | None:
    return utcnow() + args.expires_in if args.expires_in else None


def _read_keys(source: TextIO, prefix: str, dotenv: bool) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(source, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if dotenv:
            match = re.fullmatch(r"(?:export\s+)?([A-Za-z_]\w*)\s*=\s*(.*)", line)
            if match is None:
                continue
            yield f"{prefix}-{match[1]}", match[2].strip().strip("'\"")
        else:
            yield f"{prefix}-{number}", line


def _hash(args: argparse.Namespace, settings: Settings) -> None:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    made = key is None
    key = key or new_key(settings.prefix)
    try:
        key_id = parse_key_id(key, settings.prefix)
    except MalformedKey:
        if not is_importable(key):
            raise
        key_id = imported_key_id(key)
    out = {"id": key_id, "hash": hash_key(key), "collection": settings.collection}
    if made:
        out["key"] = key
    text = [
        f"In the Firestore console, add a document to the '{settings.collection}' "
        f"collection with the id {key_id} and the field hash (string):",
        out["hash"],
        "Optional fields: name (string), scopes (array of strings), "
        "disabled (boolean), expires_at (timestamp); limits: rate_limit and "
        "rate_window_seconds (integers), credits (integer), refill_amount "
        "(integer) and refill_interval ('day' or 'month'), owner (string).",
    ]
    if made:
        text += ["The new key, shown this once; store it now:", key]
    print_value(out, args.json, "\n".join(text))


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    command = args.command
    if command == "hash":
        _hash(args, settings)
        return
    # Counting uses is the service's job; the CLI only manages rows.
    async with ApiKeyStore(
        settings.model_copy(update={"usage_flush_interval": 0})
    ) as store:
        if command == "create":
            made = await store.create(
                name=args.name,
                scopes=args.scope,
                expires_at=_expires_at(args),
                owner=args.owner,
                rate_limit=args.rate_limit,
                credits=args.credits,
                refill=args.refill,
            )
            print_new(made, args.json, "Created")
        elif command == "list":
            rows = await store.list_keys(
                disabled=args.disabled,
                expired=args.expired,
                scope=args.scope,
                owner=args.owner,
            )
            print_value([describe(row) for row in rows], args.json, list_table(rows))
        elif command == "show":
            row = await store.get(args.id)
            view = await store.limits(args.id) if isinstance(row, ApiKey) else None
            value = {**describe(row), **(limit_fields(view) if view else {})}
            print_value(value, args.json, details(row, view))
        elif command == "set-limits":
            await _set_limits(store, args)
        elif command in ("disable", "enable"):
            record = await store.update(args.id, disabled=command == "disable")
            print_value(
                describe(record),
                args.json,
                f"Key {args.id} is {status(record, utcnow())}.",
            )
        elif command == "set-scopes":
            record = await store.update(args.id, scopes=args.scopes)
            scopes = ", ".join(record.scopes) or "none"
            print_value(
                describe(record), args.json, f"Key {args.id} now has scopes: {scopes}."
            )
        elif command == "revoke":
            await store.revoke(args.id)
            print_value(
                {"id": args.id, "revoked": True}, args.json, f"Revoked key {args.id}."
            )
        elif command == "rotate":
            made = await store.rotate(
                args.id, grace=args.grace, expires_at=_expires_at(args)
            )
            print_new(made, args.json, "Rotated to")
            if not args.json:
                now = utcnow()
                until = relative(now + args.grace, now)
                print(f"The old key {args.id} stops working {until}.")
        elif command == "usage" and (args.owner or args.id is None):
            await _owner_usage(store, args)
        elif command == "usage":
            if args.month or args.csv:
                raise ValueError("--month and --csv go with --owner.")
            usage = await store.usage(args.id, days=args.days)
            value = {
                "id": usage.key_id,
                "total": usage.total,
                "last_used_at": iso(usage.last_used_at),
                "days": [
                    {"day": day, "count": count, "credits": credits}
                    for day, count, credits in usage.days
                ],
            }
            print_value(value, args.json, usage_text(usage))
        elif command == "import":
            with contextlib.ExitStack() as stack:
                source = (
                    sys.stdin
                    if args.file == "-"
                    else stack.enter_context(open(args.file, encoding="utf-8"))
                )
                pairs = list(_read_keys(source, args.name_prefix, args.dotenv))
            result = await store.import_keys(
                pairs, scopes=args.scope, expires_at=_expires_at(args)
            )
            value = {
                "created": result.created,
                "existing": result.existing,
                "rejected": result.rejected,
            }
            text = (
                f"Imported {len(result.created)} keys; {len(result.existing)} were "
                f"there already; {result.rejected} lines were not keys "
                "(16-256 printable characters, no spaces)."
            )
            if not settings.imported_keys:
                text += (
                    "\nSet KEYSTORE_IMPORTED_KEYS=true so the service accepts keys "
                    "that are not of keystore's format."
                )
            print_value(value, args.json, text)


async def _owner_usage(store: ApiKeyStore, args: argparse.Namespace) -> None:
    if (args.id is None) == (args.owner is None):
        raise ValueError("Name a key id or an --owner, not both.")
    if args.csv and args.json:
        raise ValueError("Choose --csv or --json.")
    report = await store.owner_usage(args.owner, *(args.month or this_month()))
    if args.csv:
        sys.stdout.write(to_csv(report))
        return
    print_value(report.model_dump(mode="json"), args.json, owner_usage_text(report))


async def _set_limits(store: ApiKeyStore, args: argparse.Namespace) -> None:
    if (args.id is None) == (args.owner is None):
        raise ValueError("Name a key id or an --owner, not both.")
    changes: dict[str, Any] = {}
    if args.rate_limit or args.no_rate_limit:
        changes["rate_limit"] = args.rate_limit
    if args.refill or args.no_refill:
        changes["refill"] = args.refill
    if args.credits is not None:
        changes["credits"] = args.credits
    if not changes:
        raise ValueError("Nothing to change: give --rate-limit, --credits or --refill.")
    if args.owner is not None:
        view = await store.set_owner_limits(args.owner, **changes)
        text = "\n".join(f"{n:<13}{v}" for n, v in limits_text(view)) or "no limits"
        print_value({"owner": args.owner, **limit_fields(view)}, args.json, text)
        return
    await store.set_limits(args.id, **changes)
    view = await store.limits(args.id)
    record = await store.get(args.id)
    print_value(
        {**describe(record), **limit_fields(view)}, args.json, details(record, view)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = parser().parse_args(argv)
    # The store logs its warnings; the CLI says what went wrong in one line instead.
    logging.basicConfig(level=logging.ERROR)
    try:
        load_env_file()
        asyncio.run(_run(args, Settings.from_env()))
    except (KeyStoreError, ValueError, OSError) as exc:
        print(f"keystore: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
