"""The store's interfaces for mandates (see :mod:`.protocols`, which
:class:`~paywarden.signer.store.protocols.Store` and
:class:`~paywarden.signer.store.protocols.PaymentTx` gather them into).

A mandate's row is written by the first session opened from it
(:meth:`~paywarden.signer.store.protocols.SessionStore.create_session`, in that
session's transaction) and shared by every later one. Its use counts every session's
payments exactly as a session's spend counts its own: the signed ones for ever (kept
in the row as they are signed), the open ones (neither signed nor released) until
their expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from paywarden.signer.store.records import MandateRecord, MandateRevocation, MandateUse


class MandateTx(Protocol):
    """What the deciding transaction reads of a session's mandate."""

    def mandate(self, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
        """The mandate's row, with ``revoked_at`` set if the mandate or its holder key is
        revoked (the earlier time), and its use at ``now`` over every session opened
        from it; None if no such mandate. Index probes only, whatever the history: the
        row by its key, the open reservations through ``reservations_open_mandate``."""


class MandateStore(Protocol):
    """Operators' mandate revocations, and what GetSession shows of a mandate."""

    def revoke_mandate(
        self, revocation: MandateRevocation, audit: Mapping[str, Any]
    ) -> tuple[MandateRevocation, bool, int]:
        """One write transaction. By mandate id: revokes the mandate if it is not revoked
        yet (one no session was opened from yet included: it cannot open). By holder key
        thumbprint: records the revocation if it is new, and revokes every stored
        mandate of that key not revoked yet (a mandate first seen later cannot open).
        Returns the revocation in force (the earliest that revokes it, when it was
        revoked already), whether this call made it, and how many mandate rows it
        revoked by holder key (0 by id). ``audit`` is appended only when it made it."""

    def mandate(self, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
        """As :meth:`MandateTx.mandate`, read in one read transaction of its own."""

    def mandate_revocations(self) -> list[MandateRevocation]:
        """Every revocation by mandate id and by holder key, oldest first."""


__all__ = ["MandateStore", "MandateTx"]
