"""When the SDK tries a call again, and how long it waits: no I/O here.

Only ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are retried: the call may not have reached the
signer, or its answer may have been lost on the way back. Every other status is the signer's
answer and is final. A retried ``Sign`` sends the very same request (same nonce, same payload),
which the signer answers with the same decision, so a retry can never pay twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""The status codes after which a call is sent again."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one retried call and of a wait for approval (seconds).

    Attempt ``n`` (from 1) that fails with a retryable status is followed, after a delay of
    ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` scaled by a random factor in
    [0.5, 1), by attempt ``n + 1``, unless that was the ``max_attempts``-th attempt or the
    ``deadline`` (from the first attempt) would pass first. Each attempt may take at most
    ``attempt_timeout`` and never beyond the deadline.

    A wait for approval re-sends the request after ``approval_poll``, each interval 1.5 times
    the last, at most ``max_approval_poll``.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    attempt_timeout: float = 10.0
    deadline: float = 30.0
    approval_poll: float = 0.5
    max_approval_poll: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        positive = {
            "initial_backoff": self.initial_backoff,
            "max_backoff": self.max_backoff,
            "attempt_timeout": self.attempt_timeout,
            "deadline": self.deadline,
            "approval_poll": self.approval_poll,
            "max_approval_poll": self.max_approval_poll,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be greater than 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def attempts(
        self,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> Attempts:
        """The attempts of one call, starting now."""
        return Attempts(self, clock, jitter)

    def approval_wait(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> Polls:
        """The polls of a wait for approval of at most ``seconds``, starting now."""
        return Polls(self, clock() + seconds, clock)


class Attempts:
    """The attempts of one call: each one's timeout, and the delay before the next."""

    def __init__(
        self, policy: RetryPolicy, clock: Callable[[], float], jitter: Callable[[], float]
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._jitter = jitter
        self._deadline = clock() + policy.deadline
        self.count = 0
        """Attempts started so far."""

    def start(self) -> float:
        """Starts an attempt: the timeout it gets (never past the overall deadline)."""
        self.count += 1
        remaining = self._deadline - self._clock()
        return max(0.001, min(self._policy.attempt_timeout, remaining))

    def retry_after(self, code: grpc.StatusCode) -> float | None:
        """After an attempt failed with ``code``: the delay before the next attempt, or
        ``None`` when the call must not be (or can no longer be) tried again."""
        if code not in RETRYABLE or self.count >= self._policy.max_attempts:
            return None
        p = self._policy
        backoff = min(p.max_backoff, p.initial_backoff * p.multiplier ** (self.count - 1))
        delay = backoff * (0.5 + self._jitter() / 2)
        if self._clock() + delay >= self._deadline:
            return None
        return delay


class Polls:
    """The polls of a bounded wait for approval."""

    def __init__(self, policy: RetryPolicy, until: float, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._until = until
        self._clock = clock
        self._interval = policy.approval_poll

    def next_delay(self) -> float | None:
        """The delay before the next poll, or ``None`` once the wait is over."""
        remaining = self._until - self._clock()
        if remaining <= 0:
            return None
        delay = min(self._interval, remaining)
        self._interval = min(self._policy.max_approval_poll, self._interval * 1.5)
        return delay
