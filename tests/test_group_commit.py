"""Group commit (core/batching.py) over a real store, SQLite and PostgreSQL: decisions that arrive
together are applied in order in one transaction; each caller is answered only
after the commit that holds its work; a failing item fails only its caller, and a
batch that fails to commit fails every caller in it, closed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from paywarden.signer.core.batching import GroupCommit
from paywarden.signer.store.postgres_connection import PostgresConnection
from paywarden.signer.store.protocols import PaymentBatch, PaymentTx
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sql import Conn, Cursor
from paywarden.signer.store.sqlite import SqlStore
from paywarden.signer.store.sqlite_connection import SqliteConnection

from tests.support.backends import Stores
from tests.support.threads import start_and_wait_until_in

pytestmark = pytest.mark.both_backends


@pytest.fixture
def batch_store(tmp_path: Path, stores: Stores) -> Iterator[SqlStore]:
    s = stores.open(tmp_path / "state.db")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def other_store(tmp_path: Path, stores: Stores, batch_store: SqlStore) -> SqlStore:
    """The batch store's database through a store of its own (another connection, as
    another process would have): it sees only what is committed."""
    return stores.open(tmp_path / "state.db")


def _lock_wait(store: SqlStore) -> str:
    """Where a writer of ``store`` waits for the store's write lock."""
    backend = SqliteConnection if isinstance(store, SqliteConnection) else PostgresConnection
    return backend._begin.__qualname__


def _append(name: str, seen: dict[str, int], other: SqlStore) -> Callable[[PaymentTx], int]:
    def work(tx: PaymentTx) -> int:
        seen[name] = other.audit_head()[0]  # what is committed while this item runs
        return tx.audit({"action": "test.item", "time": 1, "actor": name})

    return work


def test_work_that_arrives_together_is_committed_together_in_order(
    batch_store: SqlStore, other_store: SqlStore
) -> None:
    commits = GroupCommit(batch_store)
    release = threading.Event()
    seen: dict[str, int] = {}
    answers: dict[str, tuple[int, int]] = {}  # name -> (its seq, committed size on return)

    def leader_work(tx: PaymentTx) -> int:
        release.wait(30)  # holds the first batch open while the others arrive
        return tx.audit({"action": "test.item", "time": 1, "actor": "leader"})

    def call(name: str, work: Callable[[PaymentTx], int]) -> None:
        seq = commits.run(work)
        answers[name] = (seq, other_store.audit_head()[0])

    leader = threading.Thread(target=call, args=("leader", leader_work))
    start_and_wait_until_in(leader, "leader_work")
    names = [f"f{i}" for i in range(4)]
    followers = [
        threading.Thread(target=call, args=(n, _append(n, seen, other_store)), name=n)
        for n in names
    ]
    for f in followers:  # one at a time, so that their order is known
        start_and_wait_until_in(f, "GroupCommit.run")
    release.set()
    for t in (leader, *followers):
        t.join(30)

    assert answers["leader"][0] == 1
    # the four were applied in their order of arrival, in one transaction: none of
    # them saw another's record committed, and each was answered after that commit
    assert [answers[n][0] for n in names] == [2, 3, 4, 5]
    assert {seen[n] for n in names} == {1}
    assert all(answers[n][1] >= 5 for n in names)
    assert batch_store.audit_head()[0] == 5


def test_a_failing_item_fails_only_its_caller_and_undoes_only_its_writes(
    batch_store: SqlStore,
) -> None:
    commits = GroupCommit(batch_store)
    release = threading.Event()
    results: dict[str, Any] = {}

    def hold(tx: PaymentTx) -> int:
        release.wait(30)
        return tx.audit({"action": "test.item", "time": 1, "actor": "hold"})

    def failing(tx: PaymentTx) -> int:
        tx.audit({"action": "test.item", "time": 1, "actor": "undone"})
        raise ValueError("this item fails")

    def ok(tx: PaymentTx) -> int:
        return tx.audit({"action": "test.item", "time": 1, "actor": "ok"})

    def call(name: str, work: Callable[[PaymentTx], int]) -> None:
        try:
            results[name] = commits.run(work)
        except ValueError as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("hold", hold))
    start_and_wait_until_in(first, "hold")
    others = [
        threading.Thread(target=call, args=(name, work))
        for name, work in (("a", ok), ("bad", failing), ("c", ok))
    ]
    for t in others:
        start_and_wait_until_in(t, "GroupCommit.run")
    release.set()
    for t in (first, *others):
        t.join(30)

    assert isinstance(results["bad"], ValueError)
    assert (results["hold"], results["a"], results["c"]) == (1, 2, 3)
    actors = [batch_store.audit_record(s) for s in range(1, batch_store.audit_head()[0] + 1)]
    assert len(actors) == 3 and not any("undone" in r for r in actors)


class _CommitFails:
    """The real store, except that its batch's commit fails (an injected fault: a
    full disk or a lost file cannot be had on demand)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    @contextmanager
    def payment_batch(self, wait: float | None = None) -> Iterator[PaymentBatch]:
        with self._store.payment_batch(wait) as batch:
            yield batch
            raise StoreError("injected: the commit failed")


def test_a_batch_whose_commit_fails_fails_every_caller_in_it_closed(
    batch_store: SqlStore,
) -> None:
    commits = GroupCommit(_CommitFails(batch_store))  # type: ignore[arg-type]
    release = threading.Event()
    errors: list[BaseException] = []

    def hold(tx: PaymentTx) -> int:
        release.wait(30)
        return tx.audit({"action": "test.item", "time": 1, "actor": "hold"})

    def ok(tx: PaymentTx) -> int:
        return tx.audit({"action": "test.item", "time": 1, "actor": "ok"})

    def call(work: Callable[[PaymentTx], int]) -> None:
        try:
            commits.run(work)
        except StoreError as exc:
            errors.append(exc)

    first = threading.Thread(target=call, args=(hold,))
    start_and_wait_until_in(first, "hold")
    others = [threading.Thread(target=call, args=(ok,)) for _ in range(3)]
    for t in others:
        start_and_wait_until_in(t, "GroupCommit.run")
    release.set()
    for t in (first, *others):
        t.join(30)

    assert len(errors) == 4  # both batches failed, every caller told so
    assert len({id(e) for e in errors}) == 4  # each caller its own error
    assert batch_store.audit_head()[0] == 0  # and nothing of them was committed


def test_a_caller_still_queued_when_its_wait_ends_gives_up_and_decides_nothing(
    batch_store: SqlStore, other_store: SqlStore
) -> None:
    """Another process holds the store's write lock: the batch in front waits for it;
    a caller queued behind whose own wait ends first is refused (the store is busy),
    and its work never runs, not even once the lock is free."""
    commits = GroupCommit(batch_store)
    ran: list[str] = []
    results: dict[str, Any] = {}

    def work(name: str) -> Callable[[PaymentTx], int]:
        def apply(tx: PaymentTx) -> int:
            ran.append(name)
            return tx.audit({"action": "test.item", "time": 1, "actor": name})

        return apply

    def call(name: str, wait: float) -> None:
        try:
            results[name] = commits.run(work(name), wait=wait)
        except StoreError as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("patient", 60.0))
    with other_store.payment_tx():  # the other process's write transaction, left open
        start_and_wait_until_in(first, _lock_wait(batch_store))  # waits for the lock
        call("hasty", 0.2)  # queued behind it; its wait ends while the lock is held
    first.join(60)
    assert isinstance(results["hasty"], StoreError)
    assert results["patient"] == 1 and ran == ["patient"]
    assert batch_store.audit_head()[0] == 1


class _ReleaseFails:
    """The store's real connection, except that closing a savepoint fails: it releases
    a savepoint that does not exist instead, which the database refuses (an I/O error at
    that statement cannot be had on demand)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Cursor:
        if sql == "RELEASE item":
            return self._conn.execute("RELEASE no_such_savepoint")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_decision_that_cannot_be_closed_fails_its_whole_batch(batch_store: SqlStore) -> None:
    """Its writes are neither kept apart nor undone: the batch commits nothing, rather
    than commit a decision whose caller was told it failed."""
    with pytest.raises(StoreError), batch_store.payment_batch() as batch:
        batch._conn = cast(Conn, _ReleaseFails(batch._conn))
        with pytest.raises(StoreError), batch.item() as tx:
            tx.audit({"action": "test.item", "time": 1, "actor": "closing"})
        assert batch.broken
    assert batch_store.audit_head()[0] == 0


def test_a_store_error_inside_an_item_is_undone_and_reported_as_the_store_s(
    batch_store: SqlStore,
) -> None:
    with batch_store.payment_batch() as batch:
        with pytest.raises(StoreError), batch.item() as tx:
            tx.audit({"action": "test.item", "time": 1, "actor": "undone"})
            tx._conn.execute("INSERT INTO no_such_table VALUES (1)")  # the database refuses it
        with batch.item() as tx:
            tx.audit({"action": "test.item", "time": 1, "actor": "kept"})
    assert batch_store.audit_head()[0] == 1
    assert "kept" in batch_store.audit_record(1)
