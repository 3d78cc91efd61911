"""Payments withdrawn while the HSM signs, calendar days across DST, look-alikes
behind patterns: the fixes for the policy review, each shown at its own level."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from paywarden.policy.payees import PayeeLists
from paywarden.policy.rules import PayeeAllowed
from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    FreezeSource,
    Outcome,
    ReservationStatus,
    Verdict,
)
from paywarden.signer.core.facts import day_start
from paywarden.signer.core.withdrawal import close_session, withdraw, withdraw_unsigned
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    Freeze,
    Reservation,
    SessionRecord,
)
from paywarden.signer.store.sqlite import SqlStore

from tests.support.backends import Stores
from tests.support.stored import attach
from tests.test_policy_rules import make_facts

SID = "ses_" + "C" * 43
OPERATOR = FreezeSource.OPERATOR
EVENT = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}

# The tests that take ``stores`` run on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


def _store(stores: Stores, tmp_path: Path) -> SqlStore:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(
        SessionRecord(SID, "agent-1", "planner-1", "0" * 64, 1, 2**40, None, {"USD": 1000}, {}),
        {"USD": 2},
        EVENT,
    )
    return store


def _commit(store: SqlStore, i: int, outcome: str = "allow", status: str = "spent") -> str:
    decision = DecisionRecord(
        f"dec_{i}", 1, "agent-1", SID, f"n{i}", f"h{i}", Verdict(outcome), "ALLOWED", "",
        "payments.v1", "USD", 100, payload=b"{}", expires_at=2**40,
    )  # fmt: skip
    reservation = Reservation(
        f"dec_{i}", "agent-1", SID, "USD", "acme", 100, 1, 2**40, ReservationStatus(status)
    )
    approval = (
        ApprovalRecord(f"apr_{i}", f"dec_{i}", 1, ApprovalStatus.PENDING, 1, 2**40)
        if outcome == "pending"
        else None
    )
    with store.payment_tx() as tx:
        tx.record_decision(decision, consume_nonce=True, reservation=reservation, approval=approval)
    return decision.id


def test_a_signature_made_after_the_session_closed_is_discarded(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store(stores, tmp_path)
    first = _commit(store, 1)
    second = _commit(store, 2)
    assert attach(store, first, "jws-1", 2) == ("jws-1", True)
    # the planner closes the session while the HSM signs the second payment
    closed = close_session(store, SID, 5, EVENT)
    assert closed is not None and closed.spent_minor == {"USD": 100}  # only the signed one
    assert attach(store, second, "jws-2", 2) is None
    decision = store.get_decision(second)
    assert decision is not None and decision.jws is None
    store.close()


def test_closing_expires_approvals_and_releases_holds(tmp_path: Path, stores: Stores) -> None:
    store = _store(stores, tmp_path)
    held = _commit(store, 3, outcome="pending", status="held")
    close_session(store, SID, 5, EVENT)
    assert store.pending_approvals(6) == []
    with store.approval_tx() as tx:
        approval = tx.approval("apr_3")
    assert approval is not None and approval.status == "expired"
    session = store.get_session(SID, 6)
    assert session is not None and session.spent_minor == {"USD": 0}
    assert attach(store, held, "jws", 2) is None
    store.close()


def test_an_unsigned_spent_reservation_can_be_released_but_a_signed_one_never(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store(stores, tmp_path)
    unsigned = _commit(store, 4)  # e.g. approved, then the HSM failed
    signed = _commit(store, 5)
    assert attach(store, signed, "jws-5", 2) == ("jws-5", True)
    with store.payment_tx() as tx:
        tx.set_reservation(unsigned, ReservationStatus.RELEASED)
        tx.set_reservation(signed, ReservationStatus.RELEASED)
    session = store.get_session(SID, 6)
    assert session is not None and session.spent_minor == {"USD": 100}
    store.close()


def test_the_day_starts_at_the_first_midnight_when_clocks_go_back_over_it() -> None:
    azores = ZoneInfo("Atlantic/Azores")  # 2023-10-29: 01:00 back to 00:00
    first_midnight = dt.datetime(2023, 10, 29, 0, 0, tzinfo=azores)
    second_pass = int(dt.datetime(2023, 10, 29, 0, 30, fold=1, tzinfo=azores).timestamp())
    first_pass = int(dt.datetime(2023, 10, 29, 0, 30, fold=0, tzinfo=azores).timestamp())
    assert second_pass - first_pass == 3600
    assert day_start(second_pass, azores) == int(first_midnight.timestamp())
    assert day_start(first_pass, azores) == int(first_midnight.timestamp())
    utc = ZoneInfo("UTC")
    assert day_start(86_400 * 3 + 5, utc) == 86_400 * 3


def test_a_look_alike_of_a_named_payee_is_denied_even_when_a_pattern_matches() -> None:
    lists = PayeeLists.build(
        allow=["acme.shop.example"],
        deny=[],
        allow_patterns=[r"[a-z0-9-]+\.shop\.example"],
        deny_patterns=[],
        case_insensitive=True,
    )
    rule = PayeeAllowed({"USD": lists})
    looks_alike = rule.check(make_facts(payee="acrne.shop.example"))
    assert (looks_alike.outcome, looks_alike.reason) == (Outcome.DENY, "PAYEE_CONFUSABLE")
    other = rule.check(make_facts(payee="books.shop.example"))
    assert (other.outcome, other.reason) == (Outcome.ALLOW, "PAYEE_ALLOWED_BY_PATTERN")
    # with IGNORECASE, [a-z] would match the dotless i; patterns admit ASCII payees only
    dotless = rule.check(make_facts(payee="acme-\u0131.shop.example"))
    assert dotless.outcome is Outcome.DENY


def test_withdrawing_a_sessions_unsigned_decisions_spares_the_signed_the_settled_and_others(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store(stores, tmp_path)
    other = "ses_" + "D" * 43
    store.create_session(
        SessionRecord(other, "agent-1", "planner-1", "0" * 64, 1, 2**40, None, {"USD": 1000}, {}),
        {"USD": 2},
        EVENT,
    )
    signed = _commit(store, 1)
    unsigned = _commit(store, 2)  # allowed, the HSM failed
    held = _commit(store, 3, outcome="pending", status="held")
    approved = _commit(store, 4, outcome="pending", status="held")
    denied = _commit(store, 5, outcome="pending", status="held")
    assert attach(store, signed, "jws-1", 2) == ("jws-1", True)
    with store.approval_tx() as atx:
        atx.set_approval_status("apr_4", ApprovalStatus.APPROVED, 2)
        atx.set_reservation(approved, ReservationStatus.SPENT)
        atx.set_approval_status("apr_5", ApprovalStatus.DENIED, 2)
        atx.set_reservation(denied, ReservationStatus.RELEASED)
    elsewhere = DecisionRecord(
        "dec_6", 1, "agent-1", other, "n6", "h6", Verdict.ALLOW, "ALLOWED", "",
        "payments.v1", "USD", 100, payload=b"{}", expires_at=2**40,
    )  # fmt: skip
    with store.payment_tx() as ptx:
        ptx.record_decision(
            elsewhere,
            consume_nonce=True,
            reservation=Reservation(
                "dec_6", "agent-1", other, "USD", "acme", 100, 1, 2**40, ReservationStatus.SPENT
            ),
        )
    size, _ = store.audit_head()
    with store.session_tx() as stx:
        assert withdraw_unsigned(stx, SID, 5) == [unsigned, held, approved]
    with store.session_tx() as stx:
        assert withdraw_unsigned(stx, SID, 6) == []  # nothing holds anything any more
    with store.approval_tx() as atx:
        statuses = [atx.approval(f"apr_{i}") for i in (3, 4, 5)]
    assert [a.status if a else None for a in statuses] == [
        ApprovalStatus.EXPIRED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.DENIED,
    ]
    session = store.get_session(SID, 6)
    assert session is not None and session.spent_minor == {"USD": 100}  # the signed one
    assert session.closed_at is None  # withdrawing does not close
    elsewhere_now = store.get_session(other, 6)
    assert elsewhere_now is not None and elsewhere_now.spent_minor == {"USD": 100}
    assert store.audit_head()[0] == size  # the caller audits, not the step
    store.close()


def test_withdrawing_one_decision_expires_only_an_open_approval() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def set_approval_status(self, approval_id: str, status: ApprovalStatus, now: int) -> None:
            self.calls.append((approval_id, status))

        def set_reservation(self, decision_id: str, status: ReservationStatus) -> bool:
            self.calls.append((decision_id, status))
            return False

    for status, expired in [
        (ApprovalStatus.PENDING, True),
        (ApprovalStatus.APPROVED, True),
        (ApprovalStatus.DENIED, False),
        (ApprovalStatus.EXPIRED, False),
    ]:
        tx = Recorder()
        approval = ApprovalRecord("apr_1", "dec_1", 1, status, 1, 2**40)
        after, changed = withdraw(tx, "dec_1", approval, 5)
        assert changed is expired
        assert after is not None and after.status == (ApprovalStatus.EXPIRED if expired else status)
        assert tx.calls[-1] == ("dec_1", ReservationStatus.RELEASED)
        assert (("apr_1", ApprovalStatus.EXPIRED) in tx.calls) is expired
    tx = Recorder()
    assert withdraw(tx, "dec_1", None, 5) == (None, False)
    assert tx.calls == [("dec_1", ReservationStatus.RELEASED)]


def test_closing_withdraws_once_and_audits_once(tmp_path: Path, stores: Stores) -> None:
    store = _store(stores, tmp_path)
    held = _commit(store, 7, outcome="pending", status="held")
    size, _ = store.audit_head()
    assert close_session(store, "ses_" + "Z" * 43, 5, EVENT) is None  # unknown
    assert store.audit_head()[0] == size
    closed = close_session(store, SID, 5, EVENT)
    assert closed is not None and closed.closed_at == 5 and closed.spent_minor == {"USD": 0}
    assert store.audit_head()[0] == size + 1
    again = close_session(store, SID, 9, EVENT)
    with store.session_tx() as stx:
        assert stx.unsigned_decisions(SID) == []
    assert again is not None and again.closed_at == 5
    assert store.audit_head()[0] == size + 1
    assert attach(store, held, "jws", 2) is None
    store.close()


def test_a_signature_is_kept_only_while_its_payment_is_still_committed(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store(stores, tmp_path)
    allowed = _commit(store, 11)
    pending = _commit(store, 12, outcome="pending", status="held")
    approved_held = _commit(store, 13, outcome="pending", status="held")
    approved = _commit(store, 14, outcome="pending", status="held")
    frozen = _commit(store, 15)
    with store.approval_tx() as atx:
        for i in (13, 14):
            atx.set_approval_status(f"apr_{i}", ApprovalStatus.APPROVED, 2)
        atx.set_reservation(approved, ReservationStatus.SPENT)  # 13's hold stays held
    # a freeze over another agent changes nothing; over this payment's key, everything
    store.set_freeze(Freeze(FreezeScope.AGENT, "agent-2", "x", "operator/o", OPERATOR, 2), EVENT)
    assert attach(store, allowed, "a", 2**40) is None  # its exp passed
    assert attach(store, allowed, "a", 2) == ("a", True)
    assert attach(store, pending, "p", 2) is None  # not approved yet
    assert attach(store, approved_held, "h", 2) is None  # hold not spent
    assert attach(store, approved, "b", 2) == ("b", True)
    store.set_freeze(Freeze(FreezeScope.KEY, "payments.v1", "x", "operator/o", OPERATOR, 2), EVENT)
    assert attach(store, frozen, "f", 2) is None
    assert attach(store, allowed, "again", 2) == ("a", False)  # kept as is
    assert attach(store, "dec_unknown", "u", 2) is None
    store.close()
