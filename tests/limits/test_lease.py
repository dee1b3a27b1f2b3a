"""The lease protocol, pure: plans over one document's state, and scripted
schedules of the faults each defence is there for. No I/O, no clock but the
one each test moves; the model of the document is the simulation's."""

from datetime import UTC, datetime
from typing import Any

import pytest

from keystore.errors import InvalidRow
from keystore.limits.allowance import Allowance, margin
from keystore.limits.document import read_doc
from keystore.limits.edits import limit_edit, limit_view
from keystore.limits.lease import Ask, Grant, plan
from keystore.limits.values import Refill
from tests.limits.simulation import Doc

EXPIRY = 600.0
NOON = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 2, tzinfo=UTC).timestamp()


class Holder:
    """One allowance, its ops planned and committed by hand on ``doc``."""

    def __init__(self, doc: Doc, name: str = "hA") -> None:
        self.doc = doc
        self.allowance = Allowance("keys", "k", "key", name, 0.0)
        self.ops = 0
        self.pending: tuple[dict[str, Any], str | None, int] | None = None

    def op(
        self,
        now: float,
        *,
        give_back: bool = False,
        want: int = 10,
        fate: str = "ok",
        waiting_cost: int = 0,
    ) -> Grant:
        """One op at server time ``now`` (the local clock reads the same):
        ``fate`` is "ok", "lost" (it lands, its answer does not come) or
        "late" (it lands when ``land_late`` says, if it still can)."""
        a = self.allowance
        self.ops += 1
        a.waiting_cost = waiting_cost
        a.credit_rate = want / a.horizon(10.0)
        ask = a.ask(f"op{self.ops}", 10.0, give_back=give_back, stamp=False)
        fields, version = self.doc.read()
        change, grant = plan("k", fields, ask, now=now, expiry=EXPIRY)
        if not change.needed:
            a.settle(grant, sent=now, committed=False, expiry=EXPIRY)
            return grant
        stamp = ask.holder if change.stamp else None
        if fate == "late":
            self.pending = (change.sets, stamp, version)
        else:
            assert self.doc.commit(change.sets, stamp, version, now)
        if fate == "ok":
            a.settle(grant, sent=now, committed=True, expiry=EXPIRY)
        else:
            a.lost(give_back=give_back)
        return grant

    def land_late(self, now: float) -> bool:
        assert self.pending is not None
        sets, stamp, version = self.pending
        self.pending = None
        return self.doc.commit(sets, stamp, version, now)

    def spend(self, credits: int, now: float) -> int:
        """Spend up to ``credits`` from what is held and valid: those spent."""
        a = self.allowance
        if now >= a.credits_until:
            return 0
        spent = min(credits, a.credits_held)
        if spent:
            a.take_credits(spent)
        return spent


def pool(doc: Doc) -> int:
    assert doc.fields is not None
    return int(doc.fields["credits"])


def left(doc: Doc, now: float) -> int | None:
    assert doc.fields is not None
    return read_doc("k", doc.fields).credits_left(now)


def test_a_lease_moves_credits_from_the_pool_into_the_entry() -> None:
    doc = Doc({"credits": 100})
    a = Holder(doc)
    grant = a.op(NOON, want=10)
    assert (grant.credits_granted, grant.pool, grant.left) == (10, 90, 100)
    assert doc.fields is not None
    entry = doc.fields["leases"]["hA"]
    assert (entry["credits"], entry["base"], entry["spent"]) == (10, 0, 0)
    assert entry["at"] == datetime.fromtimestamp(NOON, UTC)  # Firestore's time
    assert a.spend(4, NOON) == 4
    a.op(NOON + 1, give_back=True)
    assert pool(doc) == 96 and doc.fields["leases"] == {}


def test_a_lease_takes_a_quarter_of_what_is_left_but_what_waits_now() -> None:
    doc = Doc({"credits": 40})
    assert Holder(doc, "hA").op(NOON, want=30).credits_granted == 10
    assert Holder(doc, "hB").op(NOON, want=1, waiting_cost=20).credits_granted == 20


def test_a_refill_is_applied_once_per_period_by_firestores_clock() -> None:
    doc = Doc({"credits": 0, "refill_amount": 100, "refill_interval": "day",
               "refilled_for": "2026-12-01"})  # fmt: skip
    a, b = Holder(doc, "hA"), Holder(doc, "hB")
    assert a.op(MIDNIGHT - 1, want=50).credits_granted == 0  # still 12-01
    assert a.op(MIDNIGHT + 1, want=50).credits_granted == 25  # 12-02: refilled
    assert b.op(MIDNIGHT + 2, want=500).credits_granted == 19  # not again
    assert doc.fields is not None and doc.fields["refilled_for"] == "2026-12-02"
    # A process whose own clock is still on 12-01 has no say: plans take
    # the read's time, and a period once refilled is never refilled again.
    assert b.op(MIDNIGHT + 3, want=500).credits_granted == 14
    assert doc.fields["credits_epoch"] == 1


def test_credits_set_by_an_operator_hold_until_the_next_period() -> None:
    fields = {"credits": 5, "refill_amount": 100, "refill_interval": "day",
              "credits_set_at": datetime.fromtimestamp(NOON, UTC)}  # fmt: skip
    doc = Doc(fields)
    a = Holder(doc)
    grant = a.op(NOON + 60, want=100)
    assert (grant.epoch, grant.left) == (0, 5)  # not refilled today
    grant = a.op(MIDNIGHT + 1, want=100)
    assert (grant.epoch, grant.left) == (1, 100)  # tomorrow it is


def test_an_old_periods_lease_is_spent_until_the_period_ends_then_never() -> None:
    doc = Doc({"credits": 0, "refill_amount": 100, "refill_interval": "day",
               "refilled_for": "2026-12-01"})  # fmt: skip
    doc.fields["credits"] = 100  # type: ignore[index]
    a = Holder(doc)
    # Asked just before midnight, answered after: valid until midnight by the
    # clock of the read, whenever the answer came.
    a.op(MIDNIGHT - 0.01, want=100)
    assert a.allowance.credits_held == 25
    assert a.allowance.credits_until == pytest.approx(MIDNIGHT)
    assert a.spend(1, MIDNIGHT - 0.005) == 1
    assert a.spend(24, MIDNIGHT + 0.01) == 0


def test_a_hand_edit_of_credits_starts_a_new_epoch_and_voids_the_leases() -> None:
    doc = Doc({"credits": 100})
    a, b = Holder(doc, "hA"), Holder(doc, "hB")
    a.op(NOON, want=40)
    assert doc.fields is not None
    doc.fields["credits"] = 3  # an operator, in the console
    grant = b.op(NOON + 1, want=40)
    assert grant.epoch == 1 and grant.credits_granted == 1
    assert doc.fields["leases"].keys() == {"hB"}
    # a still spends what it held until its next op (the stated bound), then
    # holds nothing of the old epoch.
    assert a.spend(5, NOON + 2) == 5
    a.op(NOON + 3, want=40)
    assert a.allowance.epoch == 1 and a.spend(5, NOON + 3) <= 1


def test_set_limits_credits_n_leaves_n_and_voids_every_lease() -> None:
    doc = Doc({"credits": 1000})
    a = Holder(doc)
    a.op(NOON, want=400)
    assert doc.fields is not None
    edit = limit_edit("k", doc.fields, credits=3)
    assert edit.stamp_balance
    assert doc.commit(edit.sets, None, doc.version, NOON + 1)
    assert left(doc, NOON + 1) == 3
    grant = a.op(NOON + 2, want=400)
    assert (grant.epoch, grant.credits_granted, a.allowance.credits_held) == (1, 1, 1)


def test_credits_null_removes_the_refill_too() -> None:
    fields = {"credits": 5, "refill_amount": 100, "refill_interval": "day"}
    sets = limit_edit("k", fields, credits=None).sets
    assert sets["credits"] is None and sets["refill_amount"] is None


def test_a_stopped_holders_entry_is_stranded_and_it_gives_back_exactly() -> None:
    doc = Doc({"credits": 1000})
    a, b = Holder(doc, "hA"), Holder(doc, "hB")
    a.op(NOON, want=100)
    assert a.spend(30, NOON + 1) == 30
    # a stops (no CPU) past the expiry; b's next lease takes its entry for a
    # stopped process's and records it, never back in the pool.
    late = NOON + EXPIRY + 1
    b.op(late, want=10)
    assert doc.fields is not None
    assert doc.fields["stranded"] == {"hA": {"held": 100, "credits": 100, "base": 0}}
    assert read_doc("k", doc.fields).stranded_credits == 100
    # a, back, spends nothing of it: its lease ended here before it could be
    # taken there (the margin covers clocks up to 1% slow).
    assert a.allowance.credits_until == NOON + EXPIRY - margin(EXPIRY)
    assert a.spend(1, late) == 0
    # and gives back exactly what it did not spend: 70.
    grant = a.op(late + 1, give_back=True)
    assert grant.credits_returned == 70
    assert doc.fields["stranded"] == {}
    assert left(doc, late + 1) == 1000 - 30


def test_a_grant_whose_answer_was_lost_is_found_by_the_next_op() -> None:
    doc = Doc({"credits": 1000})
    a = Holder(doc)
    a.op(NOON, want=100, fate="lost")  # landed: 100 moved to a's entry
    assert a.allowance.credits_held == 0  # a spends nothing it does not know of
    a.op(NOON + 1, want=200, fate="lost")  # again: 100 more
    grant = a.op(NOON + 2, want=300)  # and 100 more
    assert grant.entry is not None and grant.entry.credits == 300
    assert a.allowance.credits_held == 300  # nothing forgotten
    a.op(NOON + 3, give_back=True)
    assert pool(doc) == 1000


def test_a_give_back_whose_answer_was_lost_spends_nothing_more() -> None:
    doc = Doc({"credits": 100})
    a = Holder(doc)
    a.op(NOON, want=20)
    a.op(NOON + 1, give_back=True, fate="lost")  # it landed: 20 back
    assert a.spend(20, NOON + 2) == 0
    grant = a.op(NOON + 3, want=20)  # finds it landed: holds what it leased now
    assert grant.credits_granted == a.allowance.credits_held
    assert pool(doc) + a.allowance.credits_held == 100


def test_the_op_after_a_lost_answer_fences_off_a_late_one() -> None:
    doc = Doc({"credits": 0})  # nothing to grant: an op would change nothing
    a = Holder(doc)
    doc.fields["credits"], doc.fields["credits_written"] = 100, 100  # type: ignore[index]
    a.op(NOON, want=20)
    doc.fields["credits"] = doc.fields["credits_written"] = 0  # type: ignore[index]
    a.op(NOON + 1, give_back=True, fate="late")  # sent; not landed yet
    # The next op has nothing else to change, yet commits: had it only read,
    # the late give-back could land after it, and a would spend twice.
    a.op(NOON + 2, want=20)
    assert not a.land_late(NOON + 3)
    assert a.spend(20, NOON + 4) == 20
    assert pool(doc) == 0


def test_an_entry_read_but_not_stamped_again_keeps_its_old_stamp() -> None:
    doc = Doc({"credits": 10})
    a = Holder(doc)
    a.op(NOON, want=10)  # takes 3 (a quarter); then nothing more to grant
    doc.fields["credits"] = doc.fields["credits_written"] = 0  # type: ignore[index]
    grant = a.op(NOON + 100, want=10)
    assert grant.stamped_at == NOON
    assert a.allowance.credits_until == NOON + EXPIRY - margin(EXPIRY)


def test_the_view_reads_a_due_refill_as_applied_and_holds_nothing_of_it() -> None:
    doc = read_doc("k", {"credits": 3, "refill_amount": 10, "refill_interval": "day",
                         "refilled_for": "2026-11-30"})  # fmt: skip
    view = limit_view(doc, NOON)
    assert (view.credits, view.held, view.next_refill) == (
        10, 0, datetime(2026, 12, 2, tzinfo=UTC))  # fmt: skip


def test_limits_an_operator_broke_fail_closed() -> None:
    with pytest.raises(InvalidRow) as broken:
        plan("acme", {"credits": "lots"}, Ask("hA", "op"), now=NOON, expiry=EXPIRY)
    assert broken.value.field == "credits"
    with pytest.raises(InvalidRow):
        read_doc("acme", {"refill_amount": 5}, kind="Owner document")
    assert str(
        InvalidRow("acme", "credits", "expected an integer", "Owner document")
    ).startswith("Owner document 'acme'")


def test_a_hand_broken_lease_entry_counts_for_nothing() -> None:
    doc = read_doc("k", {"credits": 5, "leases": {"x": "junk", "y": {"credits": "9"}}})
    assert doc.credits_held_left == 5


def test_a_refill_period_reads_from_server_time() -> None:
    daily = Refill(5, "day")
    assert daily.period(datetime.fromtimestamp(MIDNIGHT - 1, UTC)) == "2026-12-01"
    assert daily.period(datetime.fromtimestamp(MIDNIGHT, UTC)) == "2026-12-02"
