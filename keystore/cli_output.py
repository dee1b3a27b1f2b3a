"""What the command line prints: tables and details for people, JSON for
programs. Nothing here prints a key but ``print_new``, once."""

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from keystore.limits.edits import LimitView
from keystore.models import ApiKey, BrokenRow, NewKey, Usage
from keystore.reports import OwnerUsage
from keystore.times import relative, utcnow

Row = ApiKey | BrokenRow


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def describe(row: Row) -> dict[str, Any]:
    if isinstance(row, BrokenRow):
        return {"id": row.id, "broken": f"field '{row.field}': {row.problem}"}
    limits = {
        "owner": row.owner,
        "rate_limit": str(row.rate_limit) if row.rate_limit else None,
        "credits": row.credits,
        "refill": str(row.refill) if row.refill else None,
    }
    return {**row_fields(row), **limits}


def limit_fields(view: LimitView) -> dict[str, Any]:
    return {
        "rate_limit": str(view.rate_limit) if view.rate_limit else None,
        "rate_used": view.rate_used,
        "credits": view.credits,
        "credits_held": view.held,
        "credits_stranded": view.stranded,
        "refill": str(view.refill) if view.refill else None,
        "next_refill": iso(view.next_refill),
    }


def limits_text(view: LimitView) -> list[tuple[str, str]]:
    now = utcnow()
    pairs = []
    if view.rate_limit:
        pairs.append(
            ("rate limit", f"{view.rate_limit} ({view.rate_used} used this window)")
        )
    if view.credits is not None:
        held = f", {view.held} held by running processes" if view.held else ""
        pairs.append(("credits", f"{view.credits} left{held}"))
    if view.stranded:
        pairs.append(("stranded", f"{view.stranded} (held by stopped processes)"))
    if view.refill:
        when = f"{relative(view.next_refill, now)} ({iso(view.next_refill)})"
        pairs.append(("refill", f"{view.refill}, next {when}"))
    return pairs


def row_fields(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "scopes": list(row.scopes),
        "disabled": row.disabled,
        "expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
        "usage_count": row.usage_count,
        "last_used_at": iso(row.last_used_at),
        "rotated_from": row.rotated_from,
        "rotated_to": row.rotated_to,
    }


def status(row: Row, now: datetime) -> str:
    if isinstance(row, BrokenRow):
        return f"BROKEN (field '{row.field}': {row.problem})"
    if row.disabled:
        return "disabled"
    return "expired" if row.is_expired(now) else "active"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """``text`` with control characters escaped: names come from customers and
    the console, and must not move an operator's cursor or clear a screen."""
    return _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", text)


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    rows = [list(header), *([shown(cell) for cell in line] for line in lines)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    )


def list_table(rows: Sequence[Row]) -> str:
    now = utcnow()
    lines = []
    for row in rows:
        if isinstance(row, BrokenRow):
            lines.append([row.id, "", "", "", "", status(row, now)])
            continue
        lines.append(
            [
                row.id,
                row.name,
                ",".join(row.scopes) or "-",
                relative(row.expires_at, now),
                relative(row.last_used_at, now),
                status(row, now),
            ]
        )
    return table(("ID", "NAME", "SCOPES", "EXPIRES", "LAST USED", "STATUS"), lines)


def details(row: Row, view: LimitView | None = None) -> str:
    now = utcnow()
    if isinstance(row, BrokenRow):
        return f"id      {row.id}\nstatus  {status(row, now)}"
    pairs = [
        ("id", row.id),
        ("name", row.name),
        ("scopes", ", ".join(row.scopes) or "-"),
        ("status", status(row, now)),
        ("expires", f"{relative(row.expires_at, now)} ({iso(row.expires_at) or '-'})"),
        ("created", f"{relative(row.created_at, now)} ({iso(row.created_at) or '-'})"),
        ("uses", str(row.usage_count)),
        ("last used", relative(row.last_used_at, now)),
    ]
    pairs += [("rotated from", row.rotated_from)] if row.rotated_from else []
    pairs += [("rotated to", row.rotated_to)] if row.rotated_to else []
    pairs += [("owner", row.owner)] if row.owner else []
    pairs += limits_text(view) if view else []
    return "\n".join(f"{name:<13}{shown(value)}" for name, value in pairs)


def usage_text(usage: Usage) -> str:
    head = (
        f"{usage.key_id}: {usage.total} uses, last "
        f"{relative(usage.last_used_at, utcnow())}"
    )
    if not usage.days:
        return head
    lines = [[d, str(n), str(c)] for d, n, c in usage.days]
    return head + "\n" + table(("DAY", "USES", "CREDITS"), lines)


def owner_usage_text(report: OwnerUsage) -> str:
    head = (
        f"Owner {report.owner}, {report.first_day} to {report.last_day}: "
        f"{report.uses} uses, {report.credits} credits"
    )
    if report.credits_left is not None:
        head += f"; {report.credits_left} credits left"
    lines = [
        [day.day, key.id, key.name or "(revoked)", str(day.uses), str(day.credits)]
        for key in report.keys
        for day in key.days
    ]
    if not lines:
        return head
    lines.sort()
    return head + "\n" + table(("DAY", "KEY", "NAME", "USES", "CREDITS"), lines)


def print_new(made: NewKey, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps({**describe(made.record), "key": made.key}))
        return
    print(f"{verb} key {made.record.id} ({shown(made.record.name)}).")
    print("The key is shown this once; store it now:")
    print(made.key)


def print_value(value: Any, as_json: bool, text: str) -> None:
    print(json.dumps(value) if as_json else text)


# -- commands -------------------------------------------------------------------
