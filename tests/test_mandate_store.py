"""Mandates in the store (migration 15) on both backends: a session opened from a mandate
stores it once and shares its ledger with every later session of it; a revoked mandate
or holder key opens nothing; the ledger counts held and signed payments, never released
or lapsed ones, in the deciding transaction; and reading it never scans the history."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from paywarden.policy.vocabulary import ReservationStatus, Verdict
from paywarden.signer.auditlog.checkpoints import Checkpoint, checkpoint_body, encode_signature
from paywarden.signer.store import mandate_reads, sqlite_to_postgres
from paywarden.signer.store.postgres import PostgresStore
from paywarden.signer.store.records import (
    DecisionRecord,
    InvariantBroken,
    MandateMismatch,
    MandateRecord,
    MandateRevocation,
    MandateRevocationKind,
    MandateRevoked,
    MandateUse,
    Reservation,
    SessionRecord,
    StoreError,
)
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite import SqliteStore, SqlStore

from tests.support.backends import Stores
from tests.support.postgres import PgCluster
from tests.support.stored import attach

pytestmark = pytest.mark.both_backends

T0 = 1_750_000_000
MID = hashlib.sha256(b"header.payload.signature").hexdigest()
JKT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
TERMS = '{"budget":{"currency":"USD","max":"100.00"},"max_occurrences":3}'
AUDIT = {"action": "test", "time": T0, "actor": {"role": "system", "id": "test"}}


def _stored_mandate(mid: str = MID, *, terms: str = TERMS, **changes: Any) -> MandateRecord:
    record = MandateRecord(
        id=mid, agent_id="agent-1", holder_jkt=JKT, issuer="wallet-1", asset="USD",
        terms_sha256=hashlib.sha256(terms.encode()).hexdigest(), terms=terms, min_minor=None,
        max_minor=5_000, budget_minor=10_000, max_uses=3, spacing_seconds=None,
        not_before=None, reference=None, expires_at=T0 + 86_400, created_at=T0,
    )  # fmt: skip
    return replace(record, **changes)


def _ledger_session(n: int, mandate: MandateRecord | None) -> SessionRecord:
    return SessionRecord(
        id=f"ses_mandate_{n}", agent_id="agent-1", planner_id="planner-1",
        task_digest="0" * 64, created_at=T0, expires_at=T0 + 3_600, closed_at=None,
        budgets_minor={"USD": 10_000}, spent_minor={"USD": 0},
        mandate_id=None if mandate is None else mandate.id,
    )  # fmt: skip


def _store_with_mandate(stores: Stores, path: Path, sessions: int = 1) -> SqlStore:
    store = stores.open(path)
    store.migrate()
    for n in range(sessions):
        store.create_session(
            _ledger_session(n, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
        )
    return store


def _ledger_payment(
    tx: Any,
    i: int,
    amount: int,
    *,
    session: int = 0,
    at: int = T0,
    expires: int = T0 + 600,
    held: bool = False,
    jws: str | None = None,
    mandate_id: str | None = None,
) -> None:
    """Records an allowed (or, ``held``, a pending) payment of the session, as Sign does."""
    sid = f"ses_mandate_{session}"
    decision = DecisionRecord(
        id=f"dec_m{i}", created_at=at, agent_id="agent-1", session_id=sid, nonce=f"nm{i}",
        request_hash=f"h{i}", outcome=Verdict.NEEDS_APPROVAL if held else Verdict.ALLOW,
        reason="X", message="", key_id="payments.v1", asset="USD", amount_minor=amount,
        payload=b"{}", jws=jws, payee="acme", expires_at=expires,
    )  # fmt: skip
    status = ReservationStatus.HELD if held else ReservationStatus.SPENT
    reservation = Reservation(
        f"dec_m{i}", "agent-1", sid, "USD", "acme", amount, at, expires, status,
        mandate_id=mandate_id,
    )  # fmt: skip
    tx.record_decision(decision, consume_nonce=True, reservation=reservation)


def _ledger_use(store: SqlStore, now: int) -> MandateUse:
    """The mandate's use at ``now``, read in the deciding transaction and outside any,
    which must agree."""
    with store.payment_tx() as tx:
        inside = tx.mandate(MID, now)
    outside = store.mandate(MID, now)
    assert inside is not None and inside == outside
    return inside[1]


def _ledger_rows(store: SqlStore, table: str) -> int:
    def read(conn: Conn) -> int:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    result: int = store._read(read)
    return result


def _mandate_revocation(kind: MandateRevocationKind, value: str, at: int) -> MandateRevocation:
    return MandateRevocation(kind, value, f"reason at {at}", "operator/ops-1", at)


def test_a_session_from_a_new_mandate_stores_it_and_carries_its_id(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    session = store.get_session("ses_mandate_0", T0)
    assert session is not None and session.mandate_id == MID
    with store.payment_tx() as tx:
        in_tx = tx.session("ses_mandate_0", T0)
    assert in_tx is not None and in_tx.mandate_id == MID
    assert store.mandate(MID, T0) == (_stored_mandate(), MandateUse())
    assert store.audit_head()[0] == 1
    # a session without a mandate carries none, and a mandate needs its id on the session
    store.create_session(_ledger_session(7, None), {"USD": 2}, AUDIT)
    plain = store.get_session("ses_mandate_7", T0)
    assert plain is not None and plain.mandate_id is None
    with pytest.raises(ValueError, match="mandate"):
        store.create_session(_ledger_session(8, None), {"USD": 2}, AUDIT, _stored_mandate())
    assert store.mandate(hashlib.sha256(b"other").hexdigest(), T0) is None
    store.close()


def test_a_second_session_from_the_same_mandate_shares_its_row(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    later = _stored_mandate(created_at=T0 + 500, issuer="wallet-1")
    store.create_session(_ledger_session(1, later), {"USD": 2}, AUDIT, later)
    assert _ledger_rows(store, "mandates") == 1
    found = store.mandate(MID, T0)
    assert found is not None and found[0].created_at == T0  # the first session's row
    second = store.get_session("ses_mandate_1", T0)
    assert second is not None and second.mandate_id == MID
    store.close()


@pytest.mark.parametrize(
    "changes",
    [{"terms": TERMS.replace("100.00", "1000.00")}, {"agent_id": "agent-2"}, {"holder_jkt": "x"}],
    ids=["terms", "agent", "holder"],
)
def test_the_same_mandate_id_with_other_terms_agent_or_holder_opens_nothing(
    tmp_path: Path, stores: Stores, changes: dict[str, str]
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    other = _stored_mandate(**changes)
    session = replace(_ledger_session(1, other), agent_id=other.agent_id)
    with pytest.raises(MandateMismatch):
        store.create_session(session, {"USD": 2}, AUDIT, other)
    assert store.get_session("ses_mandate_1", T0) is None  # all or nothing
    assert store.audit_head()[0] == 1
    assert store.mandate(MID, T0) == (_stored_mandate(), MandateUse())
    store.close()


def test_a_mandate_revoked_by_id_opens_nothing_and_stays_revoked(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    first = _mandate_revocation(MandateRevocationKind.MANDATE, MID, T0 + 10)
    assert store.revoke_mandate(first, AUDIT) == (first, True, 0)
    again = _mandate_revocation(MandateRevocationKind.MANDATE, MID, T0 + 20)
    assert store.revoke_mandate(again, AUDIT) == (first, False, 0)
    assert store.audit_head()[0] == 2  # the session's and the first revocation's
    with pytest.raises(MandateRevoked):
        store.create_session(
            _ledger_session(1, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
        )
    assert store.get_session("ses_mandate_1", T0) is None
    found = store.mandate(MID, T0)
    assert found is not None
    assert (found[0].revoked_at, found[0].revoked_reason) == (T0 + 10, first.reason)
    assert store.mandate_revocations() == [first]
    store.close()


def test_a_holder_key_revoked_before_its_mandate_is_first_seen_opens_nothing(
    tmp_path: Path, stores: Stores
) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    holder = _mandate_revocation(MandateRevocationKind.HOLDER, JKT, T0)
    assert store.revoke_mandate(holder, AUDIT) == (holder, True, 0)
    with pytest.raises(MandateRevoked):
        store.create_session(
            _ledger_session(0, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
        )
    assert store.mandate(MID, T0) is None  # nothing written
    assert store.get_session("ses_mandate_0", T0) is None
    assert store.audit_head()[0] == 1
    store.close()


def test_a_holder_key_revoked_later_revokes_its_mandates(tmp_path: Path, stores: Stores) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    other = _stored_mandate(hashlib.sha256(b"second").hexdigest())
    store.create_session(_ledger_session(1, other), {"USD": 2}, AUDIT, other)
    holder = _mandate_revocation(MandateRevocationKind.HOLDER, JKT, T0 + 30)
    assert store.revoke_mandate(holder, AUDIT) == (holder, True, 2)
    assert store.revoke_mandate(replace(holder, created_at=T0 + 40), AUDIT) == (holder, False, 0)
    assert store.audit_head()[0] == 3
    with store.payment_tx() as tx:
        found = tx.mandate(MID, T0 + 50)
    assert found is not None and found[0].revoked_at == T0 + 30
    with pytest.raises(MandateRevoked):
        store.create_session(
            _ledger_session(2, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
        )
    # revoked already, by its key: the key's revocation is the one in force
    by_id = _mandate_revocation(MandateRevocationKind.MANDATE, MID, T0 + 60)
    assert store.revoke_mandate(by_id, AUDIT) == (holder, False, 0)
    assert store.mandate_revocations() == [holder]
    store.close()


def test_a_mandate_revoked_by_id_before_it_is_first_seen_opens_nothing(
    tmp_path: Path, stores: Stores
) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    unseen = _mandate_revocation(MandateRevocationKind.MANDATE, MID, T0)
    assert store.revoke_mandate(unseen, AUDIT) == (unseen, True, 0)
    later = _mandate_revocation(MandateRevocationKind.MANDATE, MID, T0 + 5)
    assert store.revoke_mandate(later, AUDIT) == (unseen, False, 0)  # the first stands
    with pytest.raises(MandateRevoked):
        store.create_session(
            _ledger_session(0, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
        )
    assert store.mandate(MID, T0) is None  # nothing written
    assert store.get_session("ses_mandate_0", T0) is None
    assert store.mandate_revocations() == [unseen]
    assert store.audit_head()[0] == 1  # the first revocation's record only
    store.close()


def test_a_mandate_s_use_counts_held_and_signed_payments_never_released_or_lapsed(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    with store.payment_tx() as tx:
        _ledger_payment(tx, 1, 100, held=True, expires=T0 + 1_000)  # waits for an approver
        _ledger_payment(tx, 2, 200, at=T0 + 10, expires=T0 + 60, mandate_id=MID)  # signed below
        _ledger_payment(tx, 3, 400, at=T0 + 20, expires=T0 + 1_000)  # released below
        _ledger_payment(tx, 4, 800, at=T0 + 30, expires=T0 + 100)  # never signed: lapses
        assert tx.set_reservation("dec_m3", ReservationStatus.RELEASED)
        reserved = tx.reservation("dec_m4")
    assert reserved is not None and reserved.mandate_id == MID  # the session's, unnamed
    assert attach(store, "dec_m2", "jws-2", T0 + 40) == ("jws-2", True)
    assert _ledger_use(store, T0 + 50) == MandateUse(1_100, 3, T0 + 30)
    assert _ledger_use(store, T0 + 200) == MandateUse(300, 2, T0 + 10)
    assert _ledger_use(store, T0 + 2_000) == MandateUse(200, 1, T0 + 10)  # signed: for ever
    # approved and signed later: moves from open to settled, counted once
    with store.payment_tx() as tx:
        assert tx.set_reservation("dec_m1", ReservationStatus.SPENT)
        assert tx.set_signature("dec_m1", "jws-1")
    assert _ledger_use(store, T0 + 500) == MandateUse(300, 2, T0 + 10)
    assert _ledger_use(store, T0 + 2_000) == MandateUse(300, 2, T0 + 10)
    # signed in its own decision's commit
    with store.payment_tx() as tx:
        _ledger_payment(tx, 5, 50, at=T0 + 5, expires=T0 + 65, jws="jws-5")
    assert _ledger_use(store, T0 + 2_000) == MandateUse(350, 3, T0 + 10)
    store.close()


def test_two_sessions_of_one_mandate_share_its_spend(tmp_path: Path, stores: Stores) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db", sessions=2)
    with store.payment_tx() as tx:
        _ledger_payment(tx, 1, 300, session=0)
        _ledger_payment(tx, 2, 700, session=1, at=T0 + 1, jws="jws-2")
        assert tx.mandate(MID, T0 + 2) == (_stored_mandate(), MandateUse(1_000, 2, T0 + 1))
    for n, spent in ((0, 300), (1, 700)):
        session = store.get_session(f"ses_mandate_{n}", T0 + 2)
        assert session is not None and session.spent_minor == {"USD": spent}
    store.close()


def test_a_reservation_naming_another_mandate_than_its_session_s_is_refused(
    tmp_path: Path, stores: Stores
) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    store.create_session(_ledger_session(1, None), {"USD": 2}, AUDIT)
    for session, named in ((0, "f" * 64), (1, MID)):
        with pytest.raises(InvariantBroken), store.payment_tx() as tx:
            _ledger_payment(tx, 1, 10, session=session, mandate_id=named)
        assert store.get_decision("dec_m1") is None
    assert _ledger_use(store, T0) == MandateUse()
    store.close()


def test_concurrent_decisions_on_two_sessions_never_overspend_the_mandate(
    tmp_path: Path, stores: Stores
) -> None:
    """Check-and-spend against the mandate in the deciding transaction, from two store
    objects (two replicas) and two sessions: the budget and the uses hold together."""
    path = tmp_path / "s.db"
    first = _store_with_mandate(stores, path, sessions=2)
    racing = [first, stores.open(path)]
    allowed: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with racing[n % 2].payment_tx() as tx:
            found = tx.mandate(MID, T0 + 1)
            assert found is not None
            mandate, use = found
            assert mandate.max_uses is not None
            if use.spent_minor + 3_000 > mandate.budget_minor or use.uses >= mandate.max_uses:
                return
            _ledger_payment(tx, n, 3_000, session=n % 2, jws=f"jws-{n}" if n % 3 else None)
        with lock:
            allowed.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 3  # 10_000 // 3_000, and max_uses 3
    use = _ledger_use(first, T0 + 1)
    assert (use.spent_minor, use.uses) == (9_000, 3)
    for s in racing:
        s.close()


def test_the_database_keeps_revocations_for_good(tmp_path: Path, stores: Stores) -> None:
    store = _store_with_mandate(stores, tmp_path / "s.db")
    store.revoke_mandate(_mandate_revocation(MandateRevocationKind.MANDATE, MID, T0), AUDIT)
    for statement in (
        "UPDATE mandates SET revoked_at = NULL",
        "DELETE FROM mandates",
        "DELETE FROM mandate_revocations",
        "UPDATE mandate_revocations SET reason = 'lifted'",
    ):
        with pytest.raises(StoreError):
            store._read(lambda c, s=statement: c.execute(s))
    found = store.mandate(MID, T0)
    assert found is not None and found[0].revoked_at == T0
    store.close()


def test_the_mandate_s_reads_search_indexes_and_never_scan(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.migrate()
    store.create_session(
        _ledger_session(0, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate()
    )
    with store.payment_tx() as tx:
        _ledger_payment(tx, 1, 100)
        _ledger_payment(tx, 2, 100, at=T0 + 1, jws="jws-2")
    store.close()
    conn = sqlite3.connect(path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    found = mandate_reads.mandate(conn, MID, T0 + 2)
    conn.set_trace_callback(None)
    assert found is not None and found[1] == MandateUse(200, 2, T0 + 1)
    for statement in statements:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        assert not [p for p in plan if p.startswith("SCAN")], (statement, plan)
        assert [p for p in plan if p.startswith("SEARCH")], (statement, plan)
    assert "INDEXED BY reservations_open_mandate " in "\n".join(statements)
    conn.close()


def test_the_copy_to_postgresql_keeps_mandates_their_ledger_and_revocations(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    path = tmp_path / "s.db"
    lite = SqliteStore(path)
    lite.migrate()
    lite.create_session(_ledger_session(0, _stored_mandate()), {"USD": 2}, AUDIT, _stored_mandate())
    with lite.payment_tx() as tx:
        _ledger_payment(tx, 1, 100)
        _ledger_payment(tx, 2, 200, at=T0 + 1, jws="jws-2")
    holder = _mandate_revocation(MandateRevocationKind.HOLDER, "another-key", T0)
    lite.revoke_mandate(holder, AUDIT)
    before = lite.mandate(MID, T0 + 2)
    key = ec.generate_private_key(ec.SECP256R1())  # the audit key, in software here
    size, root = lite.audit_head()
    body = checkpoint_body(size, root, T0 + 3, "audit-1")
    r, s = utils.decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    signature = encode_signature(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    lite.add_checkpoint(Checkpoint(size, root.hex(), T0 + 3, "audit-1", body.decode(), signature))
    lite.close()
    secret = pg_cluster.password_file.read_text(encoding="utf-8").strip()
    done = sqlite_to_postgres.migrate(path, pg_url, secret, [key.public_key()])
    assert ("mandates", 1) in done.tables and ("mandate_revocations", 1) in done.tables
    pg = PostgresStore(pg_url, password=secret, pool_size=1)
    try:
        assert before is not None and before[1] == MandateUse(300, 2, T0 + 1)
        assert pg.mandate(MID, T0 + 2) == before
        assert pg.mandate_revocations() == [holder]
        session = pg.get_session("ses_mandate_0", T0 + 2)
        assert session is not None and session.mandate_id == MID
    finally:
        pg.close()
