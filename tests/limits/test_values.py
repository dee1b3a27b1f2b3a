"""Limit values as operators write them: rate limits and refills; pure."""

from datetime import UTC, datetime

import pytest

from keystore.limits import RateLimit, Refill, parse_rate_limit, parse_refill


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("100/1m", RateLimit(100, 60)),
        ("10/10s", RateLimit(10, 10)),
        ("5/h", RateLimit(5, 3600)),
        (" 7 / 2d ", RateLimit(7, 172_800)),
    ],
)
def test_rate_limits_read_as_operators_write_them(text: str, limit: RateLimit) -> None:
    assert parse_rate_limit(text) == limit
    assert parse_rate_limit(str(limit)) == limit


@pytest.mark.parametrize("text", ["100", "0/1m", "10/0s", "1/1y", "-1/1m", "10/8d"])
def test_bad_rate_limits_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_limit(text)


def test_refills_and_their_periods() -> None:
    monthly, daily = parse_refill("10000/month"), parse_refill("5/day")
    assert (monthly, daily) == (Refill(10000, "month"), Refill(5, "day"))
    december = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert monthly.period(december) == "2026-12"
    assert monthly.next_at(december) == datetime(2027, 1, 1, tzinfo=UTC)
    assert daily.period(december) == "2026-12-31"
    assert daily.next_at(december) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_refill("5/week")
