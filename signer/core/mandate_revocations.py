"""Revoking mandates (``Control.RevokeMandate``): one mandate by its id (also one that no
session was opened from yet), or every mandate bound to an agent key by the key's RFC 7638
thumbprint, now and later.

The revocation is written in the store in one transaction with its audit record. The
deciding transaction reads the mandate's row (and its key's revocation) under the write
lock (:mod:`.mandate_checks`), and opening a session reads them in the transaction that
creates it: once this returns, no session opens from the mandate and no payment of a
session opened from it is signed, on any replica sharing the store. Payments signed
before stay signed.
"""

from __future__ import annotations

import logging
import re

from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, control_store_call, require
from paywarden.signer.core.validation import clean_text
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.mandate_config import THUMBPRINT
from paywarden.signer.store.records import MandateRevocation, MandateRevocationKind

log = logging.getLogger("paywarden.signer")

MANDATE_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_REASON = 1024


def _target(mandate_id: str, thumbprint: str) -> tuple[MandateRevocationKind, str]:
    if bool(mandate_id) == bool(thumbprint):
        raise InvalidInput(
            Reason.MALFORMED_REQUEST, "give exactly one of mandate_id and agent_key_thumbprint"
        )
    if mandate_id:
        if not MANDATE_ID.fullmatch(mandate_id):
            raise InvalidInput(Reason.STRING_INVALID, "mandate_id must be 64 lower-case hex")
        return MandateRevocationKind.MANDATE, mandate_id
    if not THUMBPRINT.fullmatch(thumbprint):
        raise InvalidInput(
            Reason.STRING_INVALID,
            "agent_key_thumbprint must be an RFC 7638 SHA-256 thumbprint (43 base64url)",
        )
    return MandateRevocationKind.HOLDER, thumbprint


class MandateRevocations:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store

    def revoke(
        self, caller: Principal, mandate_id: str, thumbprint: str, reason: str
    ) -> tuple[MandateRevocation, bool, int]:
        """The revocation in force, whether this call made it, and how many stored
        mandates it revoked."""
        require(caller, Role.OPERATOR)
        kind, value = _target(mandate_id, thumbprint)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._deps.now()
        revocation = MandateRevocation(kind, value, reason, str(caller), now)
        event = audit_events.event(
            "mandate.revoke", caller, now, kind=kind, value=value, reason=reason
        )
        current, created, count = control_store_call(
            lambda: self._store.revoke_mandate(revocation, event)
        )
        if created:
            log.warning(
                "mandate revoked: %s %s by %s",
                kind,
                value,
                caller,
                extra={"revoked_kind": str(kind), "revoked_value": value, "operator": str(caller)},
            )
        return current, created, count
