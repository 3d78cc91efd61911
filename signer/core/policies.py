"""Which compiled policy decides a payment in a session.

The pack in force for the agent decides, compiled once at start-up, unless the
session no longer belongs to it: no pack at all, another pack, or another
version of the same pack that the session does not fit. Each of those is a
policy that denies, with its own reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from paywarden.policy import (
    AllOf,
    PolicyPack,
    check_session,
    compile_all,
    no_pack_policy,
    pack_changed_policy,
)
from paywarden.policy.vocabulary import Asset, Phase
from paywarden.signer.store.records import SessionRecord

_MAX_SESSION_FITS = 10_000  # (session, pack) checks remembered


class Policies:
    def __init__(self, packs: tuple[PolicyPack, ...], assets: Mapping[str, Asset]) -> None:
        self._assets = assets
        self._compiled: dict[str, AllOf] = compile_all(packs, assets)
        self._session_fits: dict[tuple[str, str], str | None] = {}

    def for_session(self, pack: PolicyPack | None, session: SessionRecord) -> tuple[AllOf, int]:
        """The policy, and the velocity window (seconds) whose usage it reads."""
        if pack is None:
            return no_pack_policy(), 0
        if pack.id != session.pack_id:
            return pack_changed_policy(pack.ref()), 0
        if (pack.version, pack.sha256) != (session.pack_version, session.pack_sha256):
            # Same id, another text: the session must still fit the pack now in force
            # (a session opened under a looser version keeps none of its limits).
            why = self._session_outgrew(pack, session)
            if why is not None:
                return pack_changed_policy(pack.ref(), why), 0
        velocity = pack.model.velocity
        return self._compiled[pack.id], velocity.window_seconds if velocity else 0

    def _session_outgrew(self, pack: PolicyPack, session: SessionRecord) -> str | None:
        """Why the session no longer fits ``pack`` (None: it does). A session and a
        pack never change, so each pair is checked once."""
        key = (session.id, pack.sha256)
        if key in self._session_fits:
            return self._session_fits[key]
        violation = check_session(
            pack,
            self._assets,
            session.budgets_minor,
            session.expires_at - session.created_at,
            session.allowed_payees,
            session.phase != Phase.NORMAL,
        )
        why = None
        if violation is not None:
            why = (
                f"the session was opened under version {session.pack_version or '?'} of pack "
                f"{pack.id} and does not fit version {pack.version}: {violation.message}"
            )
        if len(self._session_fits) >= _MAX_SESSION_FITS:
            self._session_fits.pop(next(iter(self._session_fits)))
        self._session_fits[key] = why
        return why
