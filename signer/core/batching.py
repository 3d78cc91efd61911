"""Group commit: Sign decisions that arrive together share one transaction and one fsync.

A caller hands its deciding work (a function of the transaction) to :class:`GroupCommit`
and waits. Whoever finds no batch running leads the next one, and each leader hands
the lead to the first caller that arrived while its batch ran: a leader takes every
waiting item (at most :data:`MAX_BATCH`), applies them one after another, in arrival order, in
one store transaction (each in a savepoint of its own, see
:meth:`~paywarden.signer.store.protocols.PaymentStore.payment_batch`), commits once,
and only then hands each caller its result. An item that raises undoes only its own
writes and fails only its own caller; a batch whose commit fails fails every caller in
it, closed: none of them is told anything was decided or signed. No thread of its own:
the leader is one of the callers, so nothing needs starting or stopping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from paywarden.signer.store.protocols import PaymentStore, PaymentTx
from paywarden.signer.store.records import StoreError

T = TypeVar("T")

# Decisions per transaction at most: bounds how long one commit keeps its callers waiting.
MAX_BATCH = 64


@dataclass(slots=True)
class _Item(Generic[T]):
    work: Callable[[PaymentTx], T]
    ends: float | None  # time.monotonic() by which it must have the store, or give up
    wake: threading.Event = field(default_factory=threading.Event)  # done, or leads now
    taken: bool = False  # in a batch: it waits for that batch's end
    leads: bool = False  # its caller runs the next batch
    result: T | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Applies deciding work in batches, each one transaction (see the module's doc).

    Whoever leads a batch hands the lead to the first caller that arrived meanwhile,
    and wakes only the callers of its batch: no caller is woken for nothing."""

    def __init__(self, store: PaymentStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Item[object]] = []
        self._leading = False

    def run(self, work: Callable[[PaymentTx], T], wait: float | None = None) -> T:
        """``work`` applied in a committed transaction; its result once that commit is
        durable, or what it (or the batch's commit) raised. ``wait``: the longest this
        caller waits for its batch to get the store (None: the store's own bound); past
        it, a caller not yet in a batch gives up with :class:`StoreError`, decided nothing."""
        item: _Item[T] = _Item(work, None if wait is None else time.monotonic() + max(wait, 0.0))
        with self._lock:
            self._queue.append(item)  # type: ignore[arg-type]
            if not self._leading:  # the queue was empty: this caller's item is first
                self._leading = item.leads = True
        while not item.done:
            if item.leads:
                self._lead(item)  # type: ignore[arg-type]
                continue
            left = None if item.ends is None else item.ends - time.monotonic()
            if left is not None and left <= 0:
                with self._lock:
                    if not item.taken and not item.leads:
                        self._queue.remove(item)  # type: ignore[arg-type]
                        raise StoreError(f"store busy: waited {wait:.2f} s for a batch")
                left = None  # in a batch already (or leading next): its end is bounded
            item.wake.wait(left)
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _lead(self, item: _Item[object]) -> None:
        """Runs one batch, which holds ``item`` (the lead goes to the queue's first)."""
        with self._lock:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            for taken in batch:
                taken.taken = True
        try:
            self._apply(batch)
        finally:
            with self._lock:
                after = self._queue[0] if self._queue else None
                if after is None:
                    self._leading = False
                else:
                    after.leads = True
            for other in batch:
                if other is not item:
                    other.wake.set()
            if after is not None:
                after.wake.set()

    def _apply(self, batch: list[_Item[object]]) -> None:
        # The batch waits for the store as long as its most patient caller would; a
        # caller whose own time ran out meanwhile is refused by its work's own check.
        ends = [i.ends for i in batch]
        wait = None if None in ends else max(e for e in ends if e is not None) - time.monotonic()
        try:
            with self._store.payment_batch(wait) as tx:
                for item in batch:
                    try:
                        with tx.item() as one:
                            item.result = item.work(one)
                    except Exception as exc:  # noqa: BLE001 - handed to its own caller
                        item.error = exc
        except BaseException as exc:
            # Nothing of the batch was committed: every caller in it fails, closed.
            for item in batch:
                failed = StoreError(str(exc)) if isinstance(exc, StoreError) else exc
                item.result, item.error = None, failed
            if not isinstance(exc, Exception):
                raise
        finally:
            for item in batch:
                item.done = True
