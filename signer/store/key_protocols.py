"""The store's interfaces for the payment key versions (see :mod:`.protocols`, which
:class:`~paywarden.signer.store.protocols.Store` gathers them into)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from paywarden.policy.vocabulary import KeyState
from paywarden.signer.store.records import KeyVersion


class KeyTx(Protocol):
    """One custody transaction over the payment key versions: the primitives that the
    core's :mod:`~paywarden.signer.core.key_custody` composes, and the audit record of
    each change in the same transaction."""

    def version(self, key_id: str) -> KeyVersion | None: ...

    def versions(self, label: str) -> list[KeyVersion]:
        """The label's versions, oldest first."""

    def add(self, key: KeyVersion) -> bool:
        """Adds a version; False (nothing written) if its id is stored already."""

    def set_state(
        self,
        key_id: str,
        allowed_from: Collection[KeyState],
        state: KeyState,
        now: int,
        reason: str = "",
    ) -> bool:
        """Moves a version in one of ``allowed_from`` to ``state``; False if it was not.
        A version never goes back to an earlier state (the store refuses it too)."""

    def audit(self, event: Mapping[str, Any]) -> int: ...


class KeyStore(Protocol):
    """Payment key versions and their states, shared by every replica."""

    def key_tx(self) -> AbstractContextManager[KeyTx]: ...

    def key_versions(self) -> list[KeyVersion]:
        """Every version, by label and version."""

    def key_generation(self) -> int:
        """A number that changes whenever this process changes the keys through the
        store (no I/O): in-memory views of the keys reload at once when it moves."""


__all__ = ["KeyStore", "KeyTx"]
