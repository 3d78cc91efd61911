"""How long a caller still waits, and the server's stop, as the service sees them.

A caller that gave up must not be paid anyway. The gRPC edge records each call's
deadline and cancellation (:mod:`paywarden.signer.api.calls`, a server interceptor,
which sees the call's context) and serves the call under it (:func:`serving`); the
service asks (:func:`current`, :meth:`Deadline.check`) before it waits for the
store, before it commits a decision, before the HSM signs and before it answers.

Stopping is the same question: once the server stops (:class:`Gate`), new calls
are refused and every call in flight sees the end of the grace period as its
deadline, if that comes first. Nothing here knows gRPC.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from paywarden.signer.errors import Cancelled, DeadlineExceeded, Reason, Unavailable


def _always() -> bool:
    return True


def _never() -> float | None:
    return None


@dataclass(frozen=True)
class Deadline:
    """``at``: when the caller stops waiting (``time.monotonic``), None for never;
    ``active``: whether the caller is still there (False once it cancelled)."""

    at: float | None = None
    active: Callable[[], bool] = field(default=_always)
    margin: float = 0.0  # left for signing and answering after a commit
    stop_at: Callable[[], float | None] = field(default=_never)  # the server's grace end

    def _ends(self) -> tuple[float | None, bool]:
        """(when the call must be over, whether the server's stop decides it)."""
        stop = self.stop_at()
        if stop is not None and (self.at is None or stop < self.at):
            return stop, True
        return self.at, False

    def remaining(self) -> float | None:
        ends, _ = self._ends()
        return None if ends is None else ends - time.monotonic()

    def lock_wait(self) -> float | None:
        """How long the store may wait for its lock (None: its own bound)."""
        left = self.remaining()
        return None if left is None else max(0.0, left - self.margin)

    def check(self, margin: float | None = None) -> None:
        """Raises when the caller is gone or has ``margin`` seconds left or less (the
        deadline's own margin by default): :class:`DeadlineExceeded` (:class:`Cancelled`
        once the caller cancelled), or
        :class:`Unavailable` (SHUTTING_DOWN) when the server's stop came first."""
        if not self.active():
            raise Cancelled(
                Reason.CALL_CANCELLED, "the caller cancelled the call; nothing was signed"
            )
        ends, stopping = self._ends()
        if ends is None or ends - time.monotonic() > (self.margin if margin is None else margin):
            return
        if stopping:
            raise Unavailable(Reason.SHUTTING_DOWN, "the signer is stopping; nothing was signed")
        raise DeadlineExceeded(
            Reason.DEADLINE_EXCEEDED, "the call's deadline passed; nothing was signed"
        )


NO_DEADLINE = Deadline()
_CURRENT: contextvars.ContextVar[Deadline] = contextvars.ContextVar(
    "paywarden_deadline", default=NO_DEADLINE
)


def current() -> Deadline:
    """The deadline of the call this thread is serving (none outside a call)."""
    return _CURRENT.get()


@contextmanager
def serving(deadline: Deadline) -> Iterator[None]:
    token = _CURRENT.set(deadline)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class Gate:
    """The calls in flight, and the server's stop: once :meth:`close` is called new
    calls are refused (UNAVAILABLE, SHUTTING_DOWN) and those in flight must be over
    by the end of the grace period."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stop_at: float | None = None
        self._on_change = on_change

    def stop_at(self) -> float | None:
        return self._stop_at

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_flight)

    def enter(self) -> None:
        with self._cond:
            if self._stop_at is not None:
                raise Unavailable(
                    Reason.SHUTTING_DOWN, "the signer is stopping; retry on another replica"
                )
            self._in_flight += 1
            self._changed()

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._changed()
            self._cond.notify_all()

    def close(self, stop_at: float) -> None:
        """Refuses new calls from now on; calls in flight must end by ``stop_at``
        (``time.monotonic``)."""
        with self._cond:
            self._stop_at = stop_at if self._stop_at is None else min(self._stop_at, stop_at)

    def wait_idle(self, until: float) -> int:
        """Waits until no call is in flight, or ``until``; returns how many still are."""
        with self._cond:
            while self._in_flight and (left := until - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._in_flight
