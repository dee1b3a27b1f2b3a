"""The lease arithmetic of ledger.py and the limit values of limits.py: pure,
no I/O."""

from datetime import UTC, datetime

import pytest

from keystore.ledger import Ask, describe, limit_changes, plan
from keystore.limits import RateLimit, Refill, parse_rate_limit, parse_refill

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def ask(**fields: object) -> Ask:
    return Ask(holder="hA", op="op1", now=NOW.timestamp(), **fields)  # type: ignore[arg-type]


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


def test_a_lease_moves_credits_from_the_pool_to_the_holder() -> None:
    change, grant = plan("k", {"credits": 100}, ask(credits=10), lease_expiry=600)
    assert (grant.credits_granted, grant.pool, grant.left) == (10, 90, 100)
    assert change.sets["credits"] == 90
    assert change.entry == {"credits": 10, "rate": 0, "period": None, "op": "op1"}


def test_a_lease_takes_at_most_a_quarter_of_what_is_left_beyond_the_need() -> None:
    _, grant = plan("k", {"credits": 40}, ask(credits=30), lease_expiry=600)
    assert grant.credits_granted == 10
    _, grant = plan(
        "k", {"credits": 40}, ask(credits=30, credits_now=25), lease_expiry=600
    )
    assert grant.credits_granted == 25
    _, grant = plan(
        "k", {"credits": 3}, ask(credits=30, credits_now=5), lease_expiry=600
    )
    assert (grant.credits_granted, grant.pool) == (3, 0)


def test_a_give_back_returns_only_a_lease_of_this_period() -> None:
    doc = {
        "credits": 5,
        "refill_amount": 50,
        "refill_interval": "day",
        "refilled_for": "2026-12-01",
        "leases": {"hA": {"credits": 7, "period": "2026-12-01", "op": "x"}},
    }
    _, grant = plan(
        "k",
        doc,
        ask(held=7, held_period="2026-12-01", give_back=True),
        lease_expiry=600,
    )
    assert grant.pool == 12
    _, grant = plan(
        "k",
        doc,
        ask(held=7, held_period="2026-11-30", give_back=True),
        lease_expiry=600,
    )
    assert grant.pool == 5  # yesterday's credits: the refill replaced them


def test_the_first_lease_of_a_period_applies_the_refill() -> None:
    doc = {"credits": 2, "refill_amount": 50, "refill_interval": "day"}
    change, grant = plan("k", doc, ask(credits=5), lease_expiry=600)
    assert change.sets["refilled_for"] == "2026-12-01"
    assert (grant.credits_granted, grant.pool) == (5, 45)
    doc = {**doc, "refilled_for": "2026-12-01"}
    _, grant = plan("k", doc, ask(credits=5, credits_now=5), lease_expiry=600)
    assert (grant.credits_granted, grant.pool) == (2, 0)  # applied: not again


def test_a_lease_not_renewed_in_time_is_recorded_as_stranded() -> None:
    old = datetime(2026, 12, 1, 11, tzinfo=UTC)
    doc = {
        "credits": 10,
        "leases": {
            "hDead": {"credits": 4, "period": None, "at": old},
            "hOld": {"credits": 3, "period": None, "at": old},
            "hLive": {"credits": 2, "period": None, "at": NOW},
        },
    }
    change, grant = plan("k", doc, ask(credits=1), lease_expiry=600)
    assert sorted(change.deletes) == ["leases.hDead", "leases.hOld"]
    assert change.sets["credits_stranded"] == 7
    assert grant.left == 9 + 2 + 1  # the pool, the live lease, this one


def test_rate_grants_end_with_their_window() -> None:
    rate = {"rate_limit": 10, "rate_window_seconds": 60}
    start = parse_rate_limit("10/1m").window_start(NOW.timestamp())
    doc = {**rate, "rate_used": {"start": start - 60, "count": 10}}
    change, grant = plan("k", doc, ask(rate=4, window_start=start), lease_expiry=600)
    assert change.sets["rate_used"] == {"start": start, "count": 3}
    assert (grant.rate_granted, grant.rate_unclaimed) == (3, 7)
    doc = {**rate, "rate_used": {"start": start, "count": 9}}
    _, grant = plan(
        "k", doc, ask(rate=4, rate_now=4, window_start=start), lease_expiry=600
    )
    assert (grant.rate_granted, grant.rate_unclaimed) == (1, 0)


def test_setting_credits_sets_what_is_left_counting_what_is_held() -> None:
    doc = {"credits": 10, "leases": {"hB": {"credits": 4, "period": None}}}
    assert limit_changes(doc, NOW, credits=100) == {"credits": 96}
    sets = limit_changes({}, NOW, credits=5, refill=Refill(9, "month"))
    assert sets["refilled_for"] == "2026-12" and sets["credits"] == 5
    sets = limit_changes({"credits": 1}, NOW, rate_limit=None)
    assert sets == {"rate_limit": None, "rate_window_seconds": None}
    view = describe("k", {**doc, "credits_stranded": 2}, NOW)
    assert (view.credits, view.held, view.stranded) == (14, 4, 2)
