"""Audit events: what each state change writes into the tamper-evident log.

An event is a JSON object (RFC 8785 when stored) with ``action``, ``time``
and ``actor`` (role and id from the certificate, or ``system``), and the
facts of the change. The agent's own words are only ever under ``untrusted``.
The store adds ``seq`` and ``prev_root`` and appends the event in the same
transaction as the change it records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paywarden.policy.vocabulary import Outcome
from paywarden.signer.identity import Principal
from paywarden.signer.store.records import DecisionRecord

Event = dict[str, Any]

SYSTEM: dict[str, str] = {"role": "system", "id": "paywarden"}


def actor(principal: Principal | None) -> dict[str, str]:
    if principal is None:
        return dict(SYSTEM)
    return {"role": str(principal.role), "id": principal.id}


def event(action: str, who: Principal | None, time: int, **fields: Any) -> Event:
    out: Event = {"action": action, "time": time, "actor": actor(who)}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def decision_fields(record: DecisionRecord, amount: str) -> dict[str, Any]:
    """The decision as the log keeps it: outcome, reasons, trace, pack, payment."""
    return {
        "id": record.id,
        "outcome": record.outcome,
        "reason": record.reason,
        "message": record.message,
        "denied_by": [str(r.reason) for r in record.trace if r.outcome is Outcome.DENY],
        "trace": [r.as_json() for r in record.trace],
        "pack": record.pack.as_json() if record.pack is not None else {},
        "key_id": record.key_id,
        "session_id": record.session_id,
        "payee": record.payee,
        "asset": record.asset,
        "amount": amount,
        "nonce": record.nonce,
        "expires_at": record.expires_at,
    }


def payload_text(record: DecisionRecord) -> str | None:
    return record.payload.decode("utf-8") if record.payload is not None else None


def untrusted(purpose: str) -> Mapping[str, str]:
    return {"purpose": purpose}
