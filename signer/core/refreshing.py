"""When an in-memory view of the store reloads: one policy for every such view.

A view (the freezes in force, the revocations in force) is asked on every call and
reloaded from the store by :class:`Refresher`:

* at once after this process changed what it shows: the store's generation moved (or
  :meth:`Refresher.invalidate` was called), and every caller waits for that reload, so
  that none goes on with a view that misses an operator's act;
* at least every ``max_age`` seconds, for changes made by another process sharing the
  store: one caller reloads, the others go on with the view they have.

One thread reloads at a time. A view made with ``fail_closed`` is unusable
(:attr:`Refresher.loaded` False) until a reload succeeds and again after one fails, and
while it is, every caller waits for the next reload; the others keep what they had.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from paywarden.signer.errors import Reason, Unavailable
from paywarden.signer.store.records import StoreError


class Refresher:
    """Runs ``reload`` when the view is stale (see the module's text); thread-safe."""

    def __init__(
        self,
        reload: Callable[[], None],
        generation: Callable[[], int],
        max_age: float,
        clock: Callable[[], float],
        *,
        fail_closed: bool = False,
    ) -> None:
        self._reload = reload
        self._generation = generation
        self._max_age = max_age
        self._clock = clock
        self._fail_closed = fail_closed
        self._loaded = False  # False until a reload succeeds, and again after one fails
        self._seen_generation: int | None = None
        self._loaded_at = -math.inf
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the last reload succeeded (and one did)."""
        return self._loaded

    def invalidate(self) -> None:
        """This process changed what the view shows: the next caller reloads, the others wait."""
        self._seen_generation = None

    def _usable(self, generation: int) -> bool:
        """Whether the view as it stands may answer, without a reload."""
        return (
            (self._loaded or not self._fail_closed)
            and generation == self._seen_generation
            and self._clock() - self._loaded_at < self._max_age
        )

    def refresh(self) -> None:
        """Reloads when stale; raises what ``reload`` raises (the view is then not loaded)."""
        generation = self._generation()
        if self._usable(generation):
            return
        wait = generation != self._seen_generation or (self._fail_closed and not self._loaded)
        if not self._lock.acquire(blocking=wait):
            return  # another caller reloads an old view: go on with this one
        try:
            if self._usable(generation):
                return  # another caller reloaded it while this one waited
            try:
                self._reload()
            except Exception:
                self._loaded = False
                raise
            self._seen_generation = generation
            self._loaded_at = self._clock()
            self._loaded = True
        finally:
            self._lock.release()

    def refresh_or_refuse(self, log: logging.Logger, what: str, refusal: str) -> None:
        """For a ``fail_closed`` view asked on a call: reloads when stale, logs a store
        error (``cannot read <what>``), and raises :class:`Unavailable`
        (``STORE_UNAVAILABLE``, ``refusal``) while the view is not loaded."""
        try:
            self.refresh()
        except StoreError as exc:
            log.error("cannot read %s: %s", what, exc)
        if not self._loaded:
            raise Unavailable(Reason.STORE_UNAVAILABLE, refusal)
