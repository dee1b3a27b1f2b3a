"""The ``keystore`` command's arguments: its subcommands, their options, and
the types that read them (a bad value is a one-line usage error)."""

import argparse
from datetime import date, timedelta
from typing import Any, NoReturn

from keystore.limits import (
    MAX_AMOUNT,
    RateLimit,
    Refill,
    parse_rate_limit,
    parse_refill,
)
from keystore.reports import month_span
from keystore.times import parse_duration


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other keystore error; --help has the usage.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_limit(text: str) -> RateLimit:
    try:
        return parse_rate_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _refill(text: str) -> Refill:
    try:
        return parse_refill(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _month(text: str) -> tuple[date, date]:
    try:
        return month_span(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _credits(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_AMOUNT:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a number of credits (0 to {MAX_AMOUNT})"
        )
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The parser of the ``keystore`` command line."""
    parser = _Parser(prog="keystore", description="Manage API keys kept in Firestore.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *, json_output: bool = True) -> Any:
        sub = commands.add_parser(name, help=help, description=help)
        if json_output:
            sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    def key_id(sub: Any) -> None:
        sub.add_argument("id", help="the key id (the middle part of the key)")

    def expiry(sub: Any) -> None:
        sub.add_argument(
            "--expires-in", type=_duration, help="lifetime, like 30d or 12h"
        )

    def limits(sub: Any) -> None:
        sub.add_argument(
            "--rate-limit",
            type=_rate_limit,
            metavar="N/PERIOD",
            help="at most N requests per fixed window, like 100/1m (10s, 1h, 1d)",
        )
        sub.add_argument("--credits", type=_credits, help="credits left now")
        sub.add_argument(
            "--refill",
            type=_refill,
            metavar="N/PERIOD",
            help="set the credits back to N each UTC day or month: N/day, N/month",
        )

    create = command("create", "make a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", action="append", default=[], help="repeatable")
    create.add_argument("--owner", help="the owner whose limits also apply")
    expiry(create)
    limits(create)

    listing = command("list", "list keys (never the keys or their hashes)")
    listing.add_argument("--disabled", action="store_true", help="disabled keys only")
    listing.add_argument("--expired", action="store_true", help="expired keys only")
    listing.add_argument("--scope", help="keys with this scope only")
    listing.add_argument("--owner", help="keys of this owner only")

    set_limits = command("set-limits", "change the limits of a key or an owner")
    set_limits.add_argument("id", nargs="?", help="the key id (or use --owner)")
    set_limits.add_argument("--owner", help="change this owner's limits instead")
    limits(set_limits)
    set_limits.add_argument(
        "--no-rate-limit", action="store_true", help="remove the rate limit"
    )
    set_limits.add_argument(
        "--no-refill", action="store_true", help="remove the refill"
    )

    key_id(command("show", "show one key"))
    key_id(command("revoke", "delete a key's row: the key stops working"))
    key_id(command("disable", "refuse a key until it is enabled again"))
    key_id(command("enable", "accept a disabled key again"))

    rotate = command("rotate", "replace a key; the old one works for a grace period")
    key_id(rotate)
    rotate.add_argument(
        "--grace",
        type=_duration,
        default=timedelta(hours=24),
        help="how long the old key keeps working (default 24h)",
    )
    expiry(rotate)

    scopes = command("set-scopes", "replace a key's scopes")
    key_id(scopes)
    scopes.add_argument("scopes", nargs="*", metavar="SCOPE")

    usage = command("usage", "a key's use per day; or an owner's in a month, to bill")
    usage.add_argument("id", nargs="?", help="the key id (or use --owner)")
    usage.add_argument("--days", type=int, default=30, help="days to show (30)")
    usage.add_argument("--owner", help="an owner's uses per day and key instead")
    usage.add_argument(
        "--month", type=_month, help="with --owner: YYYY-MM (default: this month)"
    )
    usage.add_argument("--csv", action="store_true", help="with --owner: print CSV")

    imports = command("import", "store the hashes of existing plaintext keys")
    imports.add_argument(
        "file",
        nargs="?",
        default="-",
        help="one key per line ('-', the default: stdin)",
    )
    imports.add_argument("--name-prefix", default="imported", help="name of the keys")
    imports.add_argument("--scope", action="append", default=[], help="repeatable")
    imports.add_argument(
        "--dotenv", action="store_true", help="lines are NAME=KEY, as in a .env file"
    )
    expiry(imports)

    hashing = command("hash", "print the id and hash to add a row by hand")
    hashing.add_argument(
        "key",
        nargs="?",
        help="an existing key; '-' reads it from stdin; none: a new key",
    )
    return parser
