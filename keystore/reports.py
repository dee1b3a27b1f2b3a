"""Usage reports by owner: what a customer is billed from.

A report sums the day documents of the owner's keys (``_firestore/usage.py``),
per UTC day and per key, over a span of days; its totals are those sums
exactly. Keys revoked, rotated or deleted since keep their lines: a
customer cannot lower an invoice by deleting a key.
"""

import calendar
import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from pydantic import BaseModel, Field

from keystore._firestore.usage import DayCount

#: A month, YYYY-MM, and a day, YYYY-MM-DD (years 1000 to 9999), as JSON
#: Schema patterns.
MONTH_PATTERN = r"^[1-9][0-9]{3}-(?:0[1-9]|1[0-2])$"
DAY_PATTERN = r"^[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"
#: The longest span one report covers, in days.
MAX_DAYS = 366

_MONTH = re.compile(MONTH_PATTERN)


class DayLine(BaseModel):
    day: str = Field(examples=["2026-12-01"])
    uses: int
    credits: int


class KeyLine(BaseModel):
    id: str
    #: The key's name; None once its row is gone (revoked, or deleted).
    name: str | None
    uses: int
    credits: int
    days: list[DayLine]


class OwnerUsage(BaseModel):
    """An owner's uses and credits spent, per UTC day, per key and in all."""

    owner: str
    #: The first and last day (UTC) counted, inclusive.
    first_day: str
    last_day: str
    uses: int
    credits: int
    #: Per day, all keys together; days without use are left out.
    days: list[DayLine]
    keys: list[KeyLine]
    #: The owner's credits left and next refill, now (None: no credit limit).
    credits_left: int | None = None
    next_refill: datetime | None = None


def span(first: date, last: date) -> tuple[str, str]:
    """``first`` and ``last`` as day ids; ValueError unless they make a span of
    1 to ``MAX_DAYS`` days."""
    if last < first:
        raise ValueError("The last day comes before the first.")
    if (last - first).days >= MAX_DAYS:
        raise ValueError(f"A report covers at most {MAX_DAYS} days.")
    return first.isoformat(), last.isoformat()


def month_span(month: str) -> tuple[date, date]:
    """``YYYY-MM``'s first and last day; ValueError if it is not a month."""
    if not _MONTH.fullmatch(month):
        raise ValueError(f"'{month}' is not a month written YYYY-MM.")
    year, number = int(month[:4]), int(month[5:])
    first = date(year, number, 1)  # ValueError: month 00 or 13
    return first, first.replace(day=calendar.monthrange(year, number)[1])


def this_month(now: datetime | None = None) -> tuple[date, date]:
    """The current UTC month, from its first day to today."""
    today = (now or datetime.now(UTC)).date()
    return today.replace(day=1), today


def owner_usage(
    owner: str,
    first: str,
    last: str,
    counts: Iterable[DayCount],
    names: Mapping[str, str],
) -> OwnerUsage:
    """The report of ``counts`` (day documents); ``names``: key names by id,
    of the keys whose rows are still there."""
    by_key: dict[str, list[DayCount]] = defaultdict(list)
    by_day: dict[str, list[DayCount]] = defaultdict(list)
    for count in counts:
        by_key[count.key_id].append(count)
        by_day[count.day].append(count)
    keys = [
        KeyLine(
            id=key_id,
            name=names.get(key_id),
            uses=sum(c.uses for c in lines),
            credits=sum(c.credits for c in lines),
            days=[_line(c.day, [c]) for c in sorted(lines, key=lambda c: c.day)],
        )
        for key_id, lines in sorted(by_key.items())
    ]
    return OwnerUsage(
        owner=owner,
        first_day=first,
        last_day=last,
        uses=sum(key.uses for key in keys),
        credits=sum(key.credits for key in keys),
        days=[_line(day, lines) for day, lines in sorted(by_day.items())],
        keys=keys,
    )


def _line(day: str, counts: list[DayCount]) -> DayLine:
    return DayLine(
        day=day,
        uses=sum(c.uses for c in counts),
        credits=sum(c.credits for c in counts),
    )


#: The CSV's columns: one line per key and day, then the total.
CSV_COLUMNS = (
    "owner",
    "first_day",
    "last_day",
    "day",
    "key_id",
    "key_name",
    "uses",
    "credits",
)


def to_csv(report: OwnerUsage) -> str:
    """One line per key and day, then one ``total`` line: the invoice line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    period = (_cell(report.owner), report.first_day, report.last_day)
    lines = sorted(
        (
            (day.day, key.id, key.name or "", day)
            for key in report.keys
            for day in key.days
        ),
        key=lambda line: line[:2],
    )
    for day_id, key_id, name, day in lines:
        writer.writerow(
            (*period, day_id, _cell(key_id), _cell(name), day.uses, day.credits)
        )
    writer.writerow((*period, "total", "", "", report.uses, report.credits))
    return out.getvalue()


def _cell(text: str) -> str:
    # A spreadsheet runs a cell that starts with these as a formula; a key's
    # name is anyone's text, and a day document's id an operator's.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
