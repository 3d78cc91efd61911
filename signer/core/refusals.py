"""Refusals kept cheap: what a principal that is refused again and again can cost.

An agent that is frozen, or that sends bad requests in a loop, must not be able
to fill the disk or hold the store's write lock. Everything here is in memory,
O(1) per request, and bounded in size:

* :class:`FreezeView` — the freezes in force, cached, so that a frozen agent (or
  the whole signer, or a payment key) is refused before its request is parsed.
  It reloads from the store when this process sets or lifts a freeze, and at
  least every ``freeze_cache_seconds`` (freezes set by another process). The
  authoritative check inside the deciding transaction stays. It only answers
  "frozen or not": what an unfreeze resets is told by the operator's act itself
  (:meth:`RefusalCounter.reset`), never inferred from what the cache happened to see.
* :class:`RefusalBudget` — a token bucket per principal: each refusal takes a
  token; with none left the principal is refused (``RATE_LIMITED``) before its
  request is read.
* :class:`RefusalLog` — the first refusal of a (principal, reason) in a window is
  recorded in full; later ones in that window are counted and written as one
  ``sign.refused.summary`` record (with the count) when the window is over.
  The same windows bound identical retries of an answered request
  (:meth:`RefusalLog.counts`, ``sign.retry.summary``).
* :class:`RefusalCounter` — refusals per agent over its circuit breaker's window,
  in fixed buckets, so that the breaker counts refusals, not only decisions.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from paywarden.policy.vocabulary import FreezeScope
from paywarden.signer.core.refreshing import Refresher
from paywarden.signer.identity import Principal
from paywarden.signer.store.records import Freeze

# More principals than this and the fullest (least recently refused) buckets go:
# memory stays bounded whatever ids the certificates carry.
MAX_TRACKED = 10_000

K = TypeVar("K", bound=Hashable)


class FreezeView:
    """The freezes in force as a set of (scope, target), cheap to ask.

    Reloaded by a :class:`~paywarden.signer.core.refreshing.Refresher`: at once when this
    process set or lifted a freeze (every caller waits for that reload), at least every
    ``max_age`` seconds otherwise (the others go on with the view they have: a stale view
    only lets a request through to the authoritative check)."""

    def __init__(
        self,
        load: Callable[[], list[Freeze]],
        generation: Callable[[], int],
        max_age: float,
        clock: Callable[[], float],
    ) -> None:
        self._load = load
        self._scopes: frozenset[tuple[str, str]] = frozenset()
        self._refresher = Refresher(self._reload, generation, max_age, clock)

    def invalidate(self) -> None:
        self._refresher.invalidate()

    def refresh(self) -> None:
        """Reloads when stale (see the class's text)."""
        self._refresher.refresh()

    def _reload(self) -> None:
        self._scopes = frozenset((f.scope, f.target) for f in self._load())

    def frozen(self, agent_id: str, key_id: str) -> FreezeScope | None:
        """The scope that freezes this agent or key (raw key text: an unknown key
        simply matches nothing), or None. Session freezes are left to the
        transaction, after session binding."""
        scopes = self._scopes
        if (FreezeScope.GLOBAL, "") in scopes:
            return FreezeScope.GLOBAL
        if (FreezeScope.AGENT, agent_id) in scopes:
            return FreezeScope.AGENT
        if key_id and (FreezeScope.KEY, key_id) in scopes:
            return FreezeScope.KEY
        return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RefusalBudget:
    """A token bucket per principal: ``burst`` refusals, refilled at ``rate`` per second."""

    def __init__(self, burst: int, rate: float, max_tracked: int = MAX_TRACKED) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._max = max_tracked
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self._burst, bucket.tokens + max(0.0, now - bucket.at) * self._rate)

    def exhausted(self, principal: str, now: float) -> bool:
        with self._lock:
            bucket = self._buckets.get(principal)
            return bucket is not None and self._level(bucket, now) < 1.0

    def spend(self, principal: str, now: float) -> None:
        with self._lock:
            bucket = self._buckets.pop(principal, None)
            level = self._burst if bucket is None else self._level(bucket, now)
            self._buckets[principal] = _Bucket(max(0.0, level - 1.0), now)  # most recent last
            if len(self._buckets) > self._max:
                self._shrink(now)

    def _shrink(self, now: float) -> None:
        full = [p for p, b in self._buckets.items() if self._level(b, now) >= self._burst]
        for principal in full:
            del self._buckets[principal]
        while len(self._buckets) > self._max:  # the least recently refused go first
            del self._buckets[next(iter(self._buckets))]

    def tracked(self) -> int:
        with self._lock:
            return len(self._buckets)


@dataclass(frozen=True, slots=True)
class Summary(Generic[K]):
    """Calls of one (principal, kind) counted but not recorded in full; the kind is
    a refusal's reason, or what identifies a retry and its answer."""

    principal: Principal
    kind: K
    count: int
    since: int
    until: int
    first_seq: int | None


@dataclass(slots=True)
class _Window:
    principal: Principal
    start: int
    count: int = 0
    first_seq: int | None = None


class RefusalLog(Generic[K]):
    """Decides which refusals (or retries) are recorded in full and which are only counted.

    A window that is over is never dropped with its count: :meth:`admit` moves it to
    the pending summaries when it opens the next one, and :meth:`due` hands them out.
    Call :meth:`due` often (the checkpointer does, on every tick, before it seals):
    counted refusals stay in memory until then, and a crash loses what was not written.
    """

    def __init__(self, window_seconds: int, max_tracked: int = MAX_TRACKED) -> None:
        self._window = window_seconds
        self._max = max_tracked
        self._open: dict[tuple[Principal, K], _Window] = {}
        self._pending: list[Summary[K]] = []
        self._next_end: float = math.inf
        self._lock = threading.Lock()

    def admit(self, principal: Principal, reason: K, now: int) -> bool:
        """True: record this refusal in full (and call :meth:`recorded`); False: it
        was counted into the window's summary."""
        key = (principal, reason)
        with self._lock:
            window = self._open.get(key)
            if window is not None and now < window.start + self._window:
                window.count += 1
                return False
            if window is None and len(self._open) >= self._max:
                return True  # too many at once: record in full rather than lose a count
            if window is not None:  # over but not yet closed: its count is kept
                self._close(window, reason, now)
            self._open[key] = _Window(principal, now)
            self._next_end = min(self._next_end, now + self._window)
            return True

    def counts(self, principal: Principal, kind: K, now: int) -> int | None:
        """Counts this call into its window and returns the sequence number of the
        record it repeats, or returns None: record this call in full, then call
        :meth:`recorded` once that record is committed.

        Unlike :meth:`admit`, a window counts nothing until its first record is
        confirmed (a first record lost with its transaction is written again by the
        next call), and a full table closes its oldest window (its count is kept for
        :meth:`due`) instead of recording every call in full."""
        key = (principal, kind)
        with self._lock:
            window = self._open.get(key)
            if window is not None and now < window.start + self._window:
                if window.first_seq is None:
                    return None
                window.count += 1
                return window.first_seq
            self._reopen(principal, kind, now)
            return None

    def opens(self, principal: Principal, kind: K, now: int) -> None:
        """A call recorded in full whatever its window says (it changed state): a new
        window starts with it (call :meth:`recorded` once its record is committed),
        and the count of the one it replaces is kept for :meth:`due`."""
        with self._lock:
            self._reopen(principal, kind, now)

    def _reopen(self, principal: Principal, kind: K, now: int) -> None:
        key = (principal, kind)
        window = self._open.pop(key, None)
        if window is not None:
            self._close(window, kind, now)
        elif len(self._open) >= self._max:  # the oldest window closes, its count kept
            oldest = next(iter(self._open))
            self._close(self._open.pop(oldest), oldest[1], now)
        self._open[key] = _Window(principal, now)
        self._next_end = min(self._next_end, now + self._window)

    def recorded(self, principal: Principal, reason: K, seq: int | None) -> None:
        with self._lock:
            window = self._open.get((principal, reason))
            if window is not None and window.first_seq is None:
                window.first_seq = seq

    def due(self, now: int, *, everything: bool = False) -> list[Summary[K]]:
        """Closes the windows that are over (all of them with ``everything``) and
        returns the summaries to write: one for each window that counted refusals,
        those closed earlier by :meth:`admit` included."""
        with self._lock:
            if not everything and now < self._next_end and not self._pending:
                return []
            next_end = math.inf
            for (principal, reason), w in list(self._open.items()):
                end = w.start + self._window
                if everything or now >= end:
                    del self._open[(principal, reason)]
                    self._close(w, reason, now)
                else:
                    next_end = min(next_end, end)
            self._next_end = next_end
            out, self._pending = self._pending, []
            return out

    def _close(self, w: _Window, reason: K, now: int) -> None:
        """Keeps the window's summary (if it counted any) until :meth:`due` takes it.
        Its refusals all fell before its end: ``until`` is that end, or ``now`` when a
        window still open is closed early."""
        if w.count:
            until = min(now, w.start + self._window)
            self._pending.append(Summary(w.principal, reason, w.count, w.start, until, w.first_seq))


class _Ring:
    """Counts over the last ``window`` seconds in ``BUCKETS`` buckets (the oldest
    bucket counts whole: the count errs high, never low)."""

    BUCKETS = 60

    def __init__(self, window: int) -> None:
        self.window = window
        self.width = max(1, math.ceil(window / self.BUCKETS))
        self.slots = [(-1, 0)] * self.BUCKETS  # (bucket index, count)

    def add(self, now: int) -> int:
        index = now // self.width
        slot = index % self.BUCKETS
        at, count = self.slots[slot]
        self.slots[slot] = (index, count + 1 if at == index else 1)
        return self.total(now)

    def total(self, now: int) -> int:
        index = now // self.width
        oldest = index - math.ceil(self.window / self.width)
        return sum(c for at, c in self.slots if oldest <= at <= index)


class RefusalCounter:
    """Refusals per agent over its breaker's window, for the circuit breaker."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self._rings: dict[str, _Ring] = {}
        self._max = max_tracked
        self._lock = threading.Lock()

    def add(self, agent_id: str, window: int, now: int) -> int:
        """Counts one refusal; returns the agent's refusals in the window."""
        with self._lock:
            ring = self._rings.pop(agent_id, None)
            if ring is None or ring.window != window:
                ring = _Ring(window)
            self._rings[agent_id] = ring  # most recent last
            while len(self._rings) > self._max:
                del self._rings[next(iter(self._rings))]
            return ring.add(now)

    def count(self, agent_id: str, window: int, now: int) -> int:
        with self._lock:
            ring = self._rings.get(agent_id)
            return ring.total(now) if ring is not None and ring.window == window else 0

    def reset(self, agent_id: str) -> None:
        """An operator lifted the agent's freeze: its breaker window starts afresh
        (as the store's ``breaker_resets`` restarts the window of its decisions)."""
        with self._lock:
            self._rings.pop(agent_id, None)
