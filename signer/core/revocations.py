"""Revoked client identities: a principal id or a certificate serial that may no longer call.

An operator revokes through ``Control``; the store keeps it (with its audit record, in
one transaction) and every call is checked against an in-memory view of the store's
revocations when its certificate is read (:class:`~paywarden.signer.identity.Authenticator`).
The view reloads at once after this process revokes, and at least every
``limits.freeze_cache_seconds`` for revocations made by another process sharing the
store; each reload reads only the revocations committed since the one before. A
view that cannot be loaded refuses every call (fail closed). A principal id is
revoked in every role: ids name a person or an agent across roles, and the wider
refusal is the safe one. A revocation is never lifted: a new identity is issued instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, control_store_call
from paywarden.signer.core.refreshing import Refresher
from paywarden.signer.core.validation import clean_text
from paywarden.signer.errors import Forbidden, InvalidInput, Reason
from paywarden.signer.identity import PRINCIPAL_ID, Principal
from paywarden.signer.store.records import Revocation, RevocationKind

log = logging.getLogger("paywarden.signer.core.revocations")

MAX_REASON = 1024
# RFC 5280: a serial is a positive integer of at most 20 octets.
_SERIAL = re.compile(r"^[0-9a-fA-F]{1,40}$")


def parse_serial(text: str) -> str:
    """A certificate serial in hex (``:`` between octets allowed, as openssl prints it),
    as revocations name it: lower-case, no leading zeros."""
    digits = text.replace(":", "")
    if not _SERIAL.fullmatch(digits) or int(digits, 16) == 0:
        raise InvalidInput(
            Reason.STRING_INVALID, "cert_serial must be a positive hex number of at most 20 octets"
        )
    return format(int(digits, 16), "x")


def _identity(principal_id: str, cert_serial: str) -> tuple[RevocationKind, str]:
    if bool(principal_id) == bool(cert_serial):
        raise InvalidInput(Reason.FIELD_MISSING, "give exactly one of principal_id and cert_serial")
    if principal_id:
        if not PRINCIPAL_ID.fullmatch(principal_id):
            raise InvalidInput(Reason.STRING_INVALID, "principal_id is not a principal id")
        return RevocationKind.PRINCIPAL, principal_id
    return RevocationKind.SERIAL, parse_serial(cert_serial)


class RevocationView:
    """The revocations in force as two sets, cheap to ask on every call (thread-safe).

    Reloaded by a :class:`~paywarden.signer.core.refreshing.Refresher`, as the freezes
    are, but failing closed: a view that could not be loaded refuses every call, and
    every caller waits for its next reload. A reload reads only the revocations
    committed since the last one (``load_after``, from the store's position): a
    revocation is never lifted, so what the view holds stays true."""

    def __init__(
        self,
        load_after: Callable[[int], tuple[list[Revocation], int]],
        generation: Callable[[], int],
        max_age: float,
        clock: Callable[[], float],
    ) -> None:
        self._load_after = load_after
        self._position = 0  # of the last revocation read
        self._principals: frozenset[str] = frozenset()
        self._serials: frozenset[str] = frozenset()
        self._refresher = Refresher(self._reload, generation, max_age, clock, fail_closed=True)

    def invalidate(self) -> None:
        self._refresher.invalidate()

    def refresh(self) -> None:
        """Reloads when stale (see the class's text); raises :class:`StoreError` when the
        store cannot be read, and the view is then unusable until a reload succeeds."""
        self._refresher.refresh()

    def _reload(self) -> None:
        added, position = self._load_after(self._position)
        if added:  # new sets, each replaced in one assignment: readers never see one half-built
            self._principals |= {r.value for r in added if r.kind is RevocationKind.PRINCIPAL}
            self._serials |= {r.value for r in added if r.kind is RevocationKind.SERIAL}
        self._position = position

    def check(self, principal: Principal, serial: str) -> None:
        """Raises :class:`Forbidden` (``IDENTITY_REVOKED``) for a revoked principal id or
        certificate serial, :class:`Unavailable` when the revocations cannot be read."""
        self._refresher.refresh_or_refuse(
            log, "the revocations", "the revocations cannot be read; refused (fail closed)"
        )
        if principal.id in self._principals:
            raise Forbidden(Reason.IDENTITY_REVOKED, f"the identity {principal.id} is revoked")
        if serial in self._serials:
            raise Forbidden(Reason.IDENTITY_REVOKED, "the client certificate is revoked")


class Revocations:
    """The operator's use case: revoke an identity, list the revocations."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store
        self.view = RevocationView(
            deps.store.revocations_after,
            deps.store.revocation_generation,
            deps.limits.freeze_cache_seconds,
            time.monotonic,
        )

    def check(self, principal: Principal, serial: str) -> None:
        """The authenticator's check of every call (see :class:`RevocationView`)."""
        self.view.check(principal, serial)

    def revoke(
        self, caller: Principal, principal_id: str, cert_serial: str, reason: str
    ) -> tuple[Revocation, bool]:
        """Revokes one identity; False (and the earlier revocation) if it was revoked already."""
        kind, value = _identity(principal_id, cert_serial)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._deps.now()
        revocation = Revocation(kind, value, reason, str(caller), now)
        event = audit_events.event(
            "identity.revoke", caller, now, kind=kind, value=value, reason=reason
        )
        created = control_store_call(lambda: self._store.revoke(revocation, event))
        self.view.invalidate()  # after the commit: the next call reloads what it wrote
        if created:  # what and by whom: a principal id or a serial, never a secret
            log.warning(
                "identity revoked: %s %s by %s",
                kind,
                value,
                caller,
                extra={
                    "revoked_kind": str(kind),
                    "revoked_value": value,
                    "operator": str(caller),
                    "reason": reason,
                },
            )
        current = next(
            (r for r in self.revocations() if r.kind == kind and r.value == value), revocation
        )
        return current, created

    def revocations(self) -> list[Revocation]:
        return control_store_call(self._store.revocations)
