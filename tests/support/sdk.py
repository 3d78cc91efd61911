"""What the SDK's tests share: connection settings per identity, and the store's account of
one session (its decisions, spends and audit records), read beside the signer."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from paywarden.client import ConnectionSettings
from paywarden.signer.store.offline_reads import table_rows

from tests.helpers import Pki, Stack


def settings_for(pki: Pki, addr: str, role: str, principal: str) -> ConnectionSettings:
    """The SDK's settings for ``role``/``principal``'s certificate on the signer at ``addr``
    (its certificate is issued for ``localhost``)."""
    stem = pki.dir / f"{role}-{principal}"
    return ConnectionSettings(
        addr=addr,
        ca=pki.dir / "ca.crt",
        cert=stem.with_suffix(".crt"),
        key=stem.with_suffix(".key"),
        server_name="localhost",
    )


def upstream_of(addr: str) -> tuple[str, int]:
    """``host:port`` as a socket address."""
    host, _, port = addr.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class SessionAccount:
    """The store's rows for one session, and the audit records about them."""

    decisions: list[dict[str, Any]]
    spends: list[dict[str, Any]]
    audit: list[dict[str, Any]]

    def decided(self, nonce: str) -> list[dict[str, Any]]:
        """The decisions that ``sign.decision`` audit records hold for ``nonce``."""
        return [
            r["decision"]
            for r in self.audit
            if r["action"] == "sign.decision" and r["decision"]["nonce"] == nonce
        ]

    def retries(self, decision_id: str) -> list[dict[str, Any]]:
        """The ``sign.retry`` audit records of a decision."""
        return [
            r
            for r in self.audit
            if r["action"] == "sign.retry" and r.get("decision_id") == decision_id
        ]


def decision_rows(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    """The session's decisions, read through a connection of their own."""
    return [r for r in table_rows(stack.config.store, "decisions") if r["session_id"] == session_id]


def account_of(stack: Stack, session_id: str) -> SessionAccount:
    """What the store holds about ``session_id``: decisions, reservations, audit records."""
    decisions = decision_rows(stack, session_id)
    ids = {d["id"] for d in decisions}
    spends = [r for r in table_rows(stack.config.store, "reservations") if r["decision_id"] in ids]
    size, _root = stack.store.audit_head()
    records = [json.loads(stack.store.audit_record(seq)) for seq in range(1, size + 1)]
    audit = [
        r
        for r in records
        if r.get("decision", {}).get("session_id") == session_id or r.get("decision_id") in ids
    ]
    return SessionAccount(decisions, spends, audit)


def decided_in(stack: Stack, session_id: str) -> Callable[[], bool]:
    """A probe: has the signer committed a decision in ``session_id``?"""
    return lambda: bool(decision_rows(stack, session_id))


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts the calls made through a channel, by method path (it changes nothing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        with self._lock:
            self.calls[details.method] = self.calls.get(details.method, 0) + 1
        return continuation(details, request)
