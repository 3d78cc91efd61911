"""What the guided demo saw: each answer, each step's outcome, and the story's own tally
of its calls, from which it predicts the signer's seed metrics.

The signature check here is the demo's own (ES256 over the JWS signing input, with the
key the JWKS names): it needs nothing beyond ``cryptography``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
from paywarden.policy.vocabulary import Reason
from paywarden.v1 import signer_pb2

# The signer's trailing metadata on a refusal (README: every error carries its reason).
REASON_KEY = "paywarden-reason"
DECISION_KEY = "paywarden-decision-id"
SIGNED = "SIGNED"
PENDING = "PENDING_APPROVAL"


class DemoCheckFailed(Exception):
    """Something the story relies on did not hold (a JWS that does not verify)."""


@dataclass(frozen=True)
class Answer:
    """One ``Sign`` answer: SIGNED or PENDING_APPROVAL, or the gRPC status of a refusal."""

    status: str
    reason: str = ""
    decision_id: str = ""
    approval_id: str = ""
    jws: str = ""
    key_id: str = ""
    replayed: bool = False

    @classmethod
    def of_response(cls, resp: signer_pb2.SignResponse) -> Answer:
        return cls(
            status=signer_pb2.SignStatus.Name(resp.status),
            decision_id=resp.decision_id,
            approval_id=resp.approval_id,
            jws=resp.jws,
            key_id=resp.key_id,
            replayed=resp.replayed_result,
        )

    @classmethod
    def of_error(cls, err: grpc.RpcError) -> Answer:
        items: Any = err.trailing_metadata() or ()  # (key, value) pairs at run time
        meta = {str(k): str(v) for k, v in items}
        return cls(
            status=err.code().name,
            reason=meta.get(REASON_KEY, ""),
            decision_id=meta.get(DECISION_KEY, ""),
        )

    @property
    def refused(self) -> bool:
        return self.status not in (SIGNED, PENDING)

    def describe(self) -> str:
        return f"{self.status}{' / ' + self.reason if self.reason else ''}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        for name in ("reason", "decision_id", "approval_id", "key_id", "jws"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


@dataclass
class StepResult:
    """One step of the story: what it expects, what it saw, and whether they agree."""

    key: str
    title: str
    expected: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.ok = False
            self.problems.append(problem)
        return condition

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.key,
            "title": self.title,
            "expected": self.expected,
            "ok": self.ok,
            "problems": self.problems,
            "observed": self.observed,
        }


def _minor(amount: str) -> int:
    return int(Decimal(amount) * 100)  # the story pays USD only (2 decimals)


@dataclass
class Tally:
    """Every ``Sign`` the story made and how it was answered."""

    sign_calls: int = 0
    refused: int = 0
    spent_minor: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by session
    # agent -> (session, payee) of its payments signed or held
    kept: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    last_decided: dict[str, tuple[str, str]] = field(default_factory=dict)
    approvals_decided: int = 0
    approvals_approved: int = 0
    freezes: int = 0
    signed_after_last_freeze: int = 0

    def answered(self, agent: str, session: str, payee: str, amount: str, a: Answer) -> None:
        self.sign_calls += 1
        self.refused += a.refused
        if a.status == SIGNED:
            self.spent_minor[session] += _minor(amount)
            self.signed_after_last_freeze += self.freezes > 0
        if a.replayed:
            return  # a retry answered from its decision: nothing newly decided
        if a.status in (SIGNED, PENDING):
            self.kept[agent].add((session, payee))
        if a.decision_id and a.reason != Reason.FROZEN:
            self.last_decided[agent] = (session, payee)

    def approval_decided(self, approved: bool) -> None:
        self.approvals_decided += 1
        self.approvals_approved += approved

    def froze(self) -> None:
        self.freezes += 1
        self.signed_after_last_freeze = 0

    def expected_metrics(self) -> dict[str, Any]:
        """The seed metrics as the story predicts them from its own calls."""
        spent = [v for v in self.spent_minor.values() if v]
        diversity = {}
        for agent, (session, payee) in sorted(self.last_decided.items()):
            kept = self.kept[agent]
            diversity[agent] = {
                "session": len({p for s, p in kept if s == session} | {payee}),
                "day": len({p for _, p in kept} | {payee}),
            }
        return {
            "average_spend_per_task": {"USD": sum(spent) / len(spent) / 100 if spent else 0.0},
            "recipient_diversity": diversity,
            "override_frequency": (
                self.approvals_approved / self.approvals_decided if self.approvals_decided else 0.0
            ),
            "rejection_rate": self.refused / self.sign_calls if self.sign_calls else 0.0,
            # No payment in the last freeze's scope was signed after it: zero.
            "time_to_intervention_seconds": 0.0 if not self.signed_after_last_freeze else None,
            "sign_calls": self.sign_calls,
            "refused": self.refused,
        }
