"""Group commit: Sign decisions that arrive together share one transaction and one fsync.

A caller hands its deciding work (a function of the transaction) to :class:`GroupCommit`
and waits. Whoever finds no batch running leads the next one: it takes every waiting
item (at most :data:`MAX_BATCH`), applies them one after another, in arrival order, in
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
from dataclasses import dataclass
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
    taken: bool = False  # in a batch: it waits for that batch's end
    result: T | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Applies deciding work in batches, each one transaction (see the module's doc)."""

    def __init__(self, store: PaymentStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Item[object]] = []
        self._leading = False

    def run(self, work: Callable[[PaymentTx], T], wait: float | None = None) -> T:
        """``work`` applied in a committed transaction; its result once that commit is
        durable, or what it (or the batch's commit) raised. ``wait``: the longest this
        caller waits for its batch to get the store (None: the store's own bound); past
        it, a caller not yet in a batch gives up with :class:`StoreError`, decided nothing."""
        item: _Item[T] = _Item(work, None if wait is None else time.monotonic() + max(wait, 0.0))
        with self._cond:
            self._queue.append(item)  # type: ignore[arg-type]
            while not item.done:
                if self._leading:
                    left = None if item.ends is None else item.ends - time.monotonic()
                    if left is not None and left <= 0 and not item.taken:
                        self._queue.remove(item)  # type: ignore[arg-type]
                        raise StoreError(f"store busy: waited {wait:.2f} s for a batch")
                    self._cond.wait(left if left is None or left > 0 else None)
                    continue
                self._leading = True
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                for taken in batch:
                    taken.taken = True
                self._cond.release()
                try:
                    self._apply(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

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
