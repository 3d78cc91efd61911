""":class:`~paywarden.signer.store.mandate_protocols.MandateStore` in the SQL both
backends run (:mod:`.mandate_reads`): revocations written with their audit record in
one transaction, and a mandate's use read in one snapshot."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from paywarden.signer.store import mandate_reads
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import (
    MandateRecord,
    MandateRevocation,
    MandateRevocationKind,
    MandateUse,
    StoreError,
)
from paywarden.signer.store.sqlite_tx import append_audit


class SqlMandates(Connection):
    """Mandate revocations and reads on either backend's connection."""

    def revoke_mandate(
        self, revocation: MandateRevocation, audit: Mapping[str, Any]
    ) -> tuple[MandateRevocation, bool, int]:
        try:
            with self._write() as conn:
                if revocation.kind is MandateRevocationKind.MANDATE:
                    result = mandate_reads.revoke_one(conn, revocation)
                else:
                    result = mandate_reads.revoke_holder(conn, revocation)
                if result[1]:
                    append_audit(conn, audit)
                return result
        except sqlite3.Error as exc:
            raise StoreError(f"cannot revoke the mandate: {exc}") from None

    def mandate(self, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
        result: tuple[MandateRecord, MandateUse] | None = self._read_snapshot(
            mandate_reads.mandate, mandate_id, now
        )
        return result

    def mandate_revocations(self) -> list[MandateRevocation]:
        result: list[MandateRevocation] = self._read(mandate_reads.revocations)
        return result
