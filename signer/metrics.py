"""Prometheus metrics, on a registry of our own, served on a loopback port.

The security team's questions, as metrics: how much is spent (per asset and
on average per task), to how many payees, how often humans override, how many
requests are rejected, what is frozen, and how long a freeze takes to stop the
signatures (time to intervention).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from paywarden.policy.vocabulary import ApprovalStatus, FreezeScope, FreezeSource, Verdict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class _FreezeClock:
    scope: FreezeScope
    target: str
    at: float


# Sessions remembered per asset to tell a session's first signature from a later one.
MAX_TRACKED_SESSIONS = 10_000


class Metrics:
    def __init__(self, max_tracked_sessions: int = MAX_TRACKED_SESSIONS) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "paywarden_sign_requests", "Sign calls by answer and reason code",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "paywarden_decisions", "Recorded policy decisions by outcome and reason code",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.sign_latency = Histogram(
            "paywarden_sign_latency_seconds", "Sign call latency", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.hsm_latency = Histogram(
            "paywarden_hsm_sign_latency_seconds", "HSM signing latency",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.spend = Counter(
            "paywarden_spend", "Amount signed, in the asset's units", ["asset"], registry=r
        )
        self.task_spend = Gauge(
            "paywarden_average_spend_per_task",
            "Average amount signed per session that spent, in the asset's units",
            ["asset"], registry=r,
        )  # fmt: skip
        self.diversity = Gauge(
            "paywarden_recipient_diversity",
            "Distinct payees of the agent's last decided payment: in its session and today",
            ["agent", "window"], registry=r,
        )  # fmt: skip
        self.approvals = Counter(
            "paywarden_approvals", "Human approval events: requested, approved, denied, expired",
            ["event"], registry=r,
        )  # fmt: skip
        self.override_frequency = Gauge(
            "paywarden_override_frequency",
            "Share of held payments that humans approved (approved / decided)", registry=r,
        )  # fmt: skip
        self.rejection_rate = Gauge(
            "paywarden_rejection_rate", "Share of Sign calls refused since start", registry=r
        )
        self.freezes = Counter(
            "paywarden_freezes", "Freezes set, by scope and source", ["scope", "source"],
            registry=r,
        )  # fmt: skip
        self.frozen = Gauge(
            "paywarden_frozen_scopes", "Freezes in force, by scope", ["scope"], registry=r
        )
        self.time_to_intervention = Gauge(
            "paywarden_time_to_intervention_seconds",
            "For the latest freeze: time from the freeze to the last signature in its scope",
            registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            "paywarden_pending_approvals", "Payments waiting for approval", registry=r
        )
        self.hsm_up = Gauge("paywarden_hsm_available", "1 while the HSM can sign", registry=r)
        self.receipts = Counter(
            "paywarden_receipts",
            "Receipts given, by whether the HSM signed the body or its signature was reused",
            ["signature"], registry=r,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._answered = 0
        self._refused = 0
        self._approved = 0
        self._decided_approvals = 0
        # Per asset: units signed and sessions that signed (running totals, O(1) per
        # signature), and the recent sessions that signed, bounded: a session leaves
        # when it is closed or when max_tracked_sessions newer ones signed after it
        # (one evicted and signing again would count twice; sessions are short).
        self._max_sessions = max_tracked_sessions
        self._task_units: dict[str, float] = {}
        self._task_count: dict[str, int] = {}
        self._task_seen: dict[str, OrderedDict[str, None]] = {}
        self._last_freeze: _FreezeClock | None = None

    # -- events --

    def sign_answered(self, outcome: str, reason: str, seconds: float) -> None:
        self.requests.labels(outcome, reason).inc()
        self.sign_latency.observe(seconds)
        with self._lock:
            self._answered += 1
            if outcome == "refused":
                self._refused += 1
            self.rejection_rate.set(self._refused / self._answered)

    def decided(self, outcome: Verdict, reason: str) -> None:
        self.decisions.labels(outcome, reason).inc()

    def signed(self, asset: str, units: float, session_id: str, agent_id: str, key_id: str) -> None:
        self.spend.labels(asset).inc(units)
        with self._lock:
            seen = self._task_seen.setdefault(asset, OrderedDict())
            if session_id in seen:
                seen.move_to_end(session_id)
            else:
                seen[session_id] = None
                self._task_count[asset] = self._task_count.get(asset, 0) + 1
                while len(seen) > self._max_sessions:
                    seen.popitem(last=False)
            self._task_units[asset] = self._task_units.get(asset, 0.0) + units
            self.task_spend.labels(asset).set(self._task_units[asset] / self._task_count[asset])
            clock = self._last_freeze
            if clock is not None and _in_scope(clock, agent_id, session_id, key_id):
                self.time_to_intervention.set(max(0.0, time.time() - clock.at))

    def session_ended(self, session_id: str) -> None:
        """A closed session signs nothing more: forget it (its spend stays counted)."""
        with self._lock:
            for seen in self._task_seen.values():
                seen.pop(session_id, None)

    def tracked_sessions(self) -> int:
        with self._lock:
            return sum(len(seen) for seen in self._task_seen.values())

    def payees(self, agent_id: str, session_payees: int, day_payees: int) -> None:
        self.diversity.labels(agent_id, "session").set(session_payees)
        self.diversity.labels(agent_id, "day").set(day_payees)

    def approval(self, event: str) -> None:
        self.approvals.labels(event).inc()
        with self._lock:
            if event in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED, ApprovalStatus.EXPIRED):
                self._decided_approvals += 1
                if event == ApprovalStatus.APPROVED:
                    self._approved += 1
                self.override_frequency.set(self._approved / self._decided_approvals)

    def froze(self, scope: FreezeScope, target: str, source: FreezeSource, at: float) -> None:
        self.freezes.labels(scope, source).inc()
        self.frozen.labels(scope).inc()
        with self._lock:
            self._last_freeze = _FreezeClock(scope, target, at)
            self.time_to_intervention.set(0.0)

    def unfroze(self, scope: FreezeScope, target: str) -> None:
        """Signatures after an unfreeze say nothing about that freeze's intervention."""
        with self._lock:
            clock = self._last_freeze
            if clock is not None and (clock.scope, clock.target) == (scope, target):
                self._last_freeze = None

    def frozen_now(self, counts: dict[str, int]) -> None:
        for scope in FreezeScope:
            self.frozen.labels(scope).set(counts.get(scope, 0))

    def serve(self, listen: str) -> int:
        """Starts the HTTP endpoint; returns the port it bound."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        bound: int = server.server_address[1]
        return bound


def _in_scope(clock: _FreezeClock, agent_id: str, session_id: str, key_id: str) -> bool:
    return (
        clock.scope == FreezeScope.GLOBAL
        or (clock.scope == FreezeScope.AGENT and clock.target == agent_id)
        or (clock.scope == FreezeScope.SESSION and clock.target == session_id)
        or (clock.scope == FreezeScope.KEY and clock.target == key_id)
    )
