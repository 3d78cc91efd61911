"""Live policy reload: an operator has the signer read its pack directory again.

Every pack is validated and compiled as at start-up; one failure leaves the set in
force untouched and says which file and field. A valid set is compared with the one
in force (:mod:`paywarden.policy.diff`). When a change widens an agent whose pack in
force or new pack sets ``widening_needs_second_operator``, the exact files read are
stored as a pending reload and nothing changes until a *different* operator confirms
it, while the set in force is still the one it was proposed against and before it
expires; confirming applies the stored files, not what the directory holds by then.
Otherwise the new set is recorded in force and swapped in (:class:`LivePolicy`): a
Sign already deciding finishes on the set it started with, the next one uses the new
set, and a session whose pack changed is refused ``SESSION_PACK_CHANGED`` as after a
restart. Every reload, refused ones included, leaves an audit record with the hashes
of both sets and the list of widening changes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paywarden.policy import PackError, PackSet
from paywarden.policy.diff import PackSetDiff, diff_pack_sets
from paywarden.policy.packs import build_pack_set, load_pack_dir, parse_pack
from paywarden.policy.vocabulary import ReloadState
from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, control_store_call, require
from paywarden.signer.core.key_grants import check_grants, check_profiles
from paywarden.signer.core.policy_set import PolicySet
from paywarden.signer.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    PaywardenError,
    PreconditionFailed,
    Reason,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import PolicyReload

log = logging.getLogger("paywarden.signer.core.reloads")

PENDING_SECONDS = 24 * 3600  # how long a proposed reload waits for its second operator
_RELOAD_ID = re.compile(r"rld_[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    state: ReloadState  # APPLIED, UNCHANGED or PENDING
    old: PolicySet
    new: PolicySet
    diff: PackSetDiff
    reload_id: str = ""
    expires_at: int = 0
    proposed_by: str = ""


@dataclass(frozen=True, slots=True)
class ShownReload:
    record: PolicyReload
    old: PolicySet  # the set in force now
    new: PolicySet | None  # the proposed set (None once the reload is settled)
    diff: PackSetDiff | None  # from the set in force now to the proposed one


def _fields(
    old: PolicySet,
    new_sha: str,
    new_refs: list[dict[str, str | int]] | None,
    diff: PackSetDiff | None,
) -> dict[str, Any]:
    """What every reload record holds: both set hashes and packs, and what widens."""
    out: dict[str, Any] = {"old_sha256": old.sha256, "old_packs": old.refs(), "new_sha256": new_sha}
    if new_refs is not None:
        out["new_packs"] = new_refs
    if diff is not None:
        out["widens"] = diff.widens
        out["widening"] = [c.as_json() for c in diff.widening()]
        out["needs_second_operator"] = diff.needs_second_operator
    return out


def _file_hashes(directory: Path) -> list[dict[str, str]]:
    """What a refused reload read: each pack file's name and SHA-256 (no set hash: the
    files make no valid set)."""
    out = []
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"unreadable: {exc.strerror}"
        out.append({"file": path.name, "sha256": digest})
    return out


class PolicyReloads:
    """The operator's use case: reload the packs, confirm a pending reload."""

    def __init__(
        self,
        deps: Deps,
        directory: Path,
        groups: Mapping[str, Iterable[str]],
        pending_seconds: int = PENDING_SECONDS,
    ) -> None:
        self._deps = deps
        self._store = deps.store
        self._live = deps.policy
        self._directory = directory
        self._groups = groups
        self._pending_seconds = pending_seconds

    def _build(self, packs_of: Callable[[], PackSet]) -> PolicySet:
        packs = packs_of()
        # Key scoping: every key a pack grants must exist and be active (issue 12, 2).
        versions = control_store_call(self._store.key_versions)
        check_grants(packs.packs, versions, self._deps.payment_keys)
        check_profiles(packs.packs, self._deps.key_profiles, self._deps.x402.keys())
        return PolicySet.build(packs, self._deps.assets, self._deps.tz.key)

    def _refuse(
        self, caller: Principal, action: str, error: PaywardenError, **fields: Any
    ) -> PaywardenError:
        """Audits a refused reload or confirmation (why, and the hashes known) and
        returns ``error`` for the caller to raise."""
        event = audit_events.event(
            action,
            caller,
            self._deps.now(),
            outcome=ReloadState.REJECTED,
            reason=error.reason,
            error=error.message,
            **fields,
        )
        error.audit_seq = control_store_call(lambda: self._store.audit_event(event))
        log.warning("policy reload refused: %s", error.message, extra={"reason": str(error.reason)})
        return error

    # -- ReloadPolicy -------------------------------------------------------------------

    def reload(self, caller: Principal) -> ReloadOutcome:
        require(caller, Role.OPERATOR)
        with self._live.lock:
            old = self._live.current()
            try:
                new = self._build(lambda: load_pack_dir(self._directory, self._groups))
            except PackError as exc:
                error = PreconditionFailed(Reason.POLICY_PACK_INVALID, f"nothing changed: {exc}")
                raise self._refuse(
                    caller,
                    "policy.reload",
                    error,
                    old_sha256=old.sha256,
                    old_packs=old.refs(),
                    new_files=_file_hashes(self._directory),
                ) from None
            diff = diff_pack_sets(old.packs, new.packs)
            now = self._deps.now()
            fields = _fields(old, new.sha256, new.refs(), diff)
            if new.sha256 == old.sha256:
                event = audit_events.event(
                    "policy.reload", caller, now, outcome=ReloadState.UNCHANGED, **fields
                )
                control_store_call(lambda: self._store.audit_event(event))
                return ReloadOutcome(ReloadState.UNCHANGED, old, new, diff)
            if diff.widens and diff.needs_second_operator:
                return self._propose(caller, old, new, diff, fields, now)
            event = audit_events.event(
                "policy.reload", caller, now, outcome=ReloadState.APPLIED, **fields
            )
            self._put_in_force(new, now, event, None)
            return ReloadOutcome(ReloadState.APPLIED, old, new, diff)

    def _propose(
        self,
        caller: Principal,
        old: PolicySet,
        new: PolicySet,
        diff: PackSetDiff,
        fields: dict[str, Any],
        now: int,
    ) -> ReloadOutcome:
        reload_id = "rld_" + secrets.token_hex(16)
        expires = now + self._pending_seconds
        proposal = PolicyReload(
            reload_id,
            caller.id,
            now,
            expires,
            old.sha256,
            new.sha256,
            tuple((name, text.decode("utf-8")) for name, text in new.texts()),
            tuple(c.as_json() for c in diff.widening()),
            ReloadState.PENDING,
        )
        event = audit_events.event(
            "policy.reload",
            caller,
            now,
            outcome=ReloadState.PENDING,
            reload_id=reload_id,
            expires_at=expires,
            **fields,
        )
        control_store_call(lambda: self._store.propose_reload(proposal, event))
        log.warning("a widening policy reload waits for a second operator: %s", reload_id)
        return ReloadOutcome(ReloadState.PENDING, old, new, diff, reload_id, expires, caller.id)

    def _put_in_force(
        self, new: PolicySet, now: int, event: dict[str, Any], confirm: tuple[str, str] | None
    ) -> bool:
        """Records ``new`` in force, then swaps it in (the caller holds the live lock)."""
        texts = [(name, text.decode("utf-8")) for name, text in new.texts()]
        done = control_store_call(
            lambda: self._store.put_policy_in_force(
                new.sha256, texts, now, event, confirm, new.context.as_json()
            )
        )
        if done:
            self._live.replace(new)
            log.warning("policy packs reloaded: set %s in force", new.sha256)
        return done

    # -- ConfirmReload ------------------------------------------------------------------

    def get(self, caller: Principal, reload_id: str) -> ShownReload:
        """A reload and, while pending, the changes it would make against the set in
        force now (what its second operator reviews before confirming)."""
        require(caller, Role.OPERATOR)
        if not _RELOAD_ID.fullmatch(reload_id):
            raise InvalidInput(Reason.STRING_INVALID, "reload_id is not a reload id")
        old = self._live.current()
        pending = control_store_call(lambda: self._store.policy_reload(reload_id))
        if pending is None:
            raise NotFound(Reason.RELOAD_NOT_FOUND, "no such reload")
        if pending.state is not ReloadState.PENDING:
            return ShownReload(pending, old, None, None)
        try:
            new = self._build(lambda: self._pack_set(pending))
        except PackError as exc:
            raise PreconditionFailed(
                Reason.POLICY_PACK_INVALID, f"the proposed packs no longer validate: {exc}"
            ) from None
        if new.sha256 != pending.new_sha256:
            raise PreconditionFailed(
                Reason.POLICY_PACK_INVALID, "the stored packs do not make the proposed set"
            )
        return ShownReload(pending, old, new, diff_pack_sets(old.packs, new.packs))

    def confirm(self, caller: Principal, reload_id: str, reviewed_sha256: str) -> ReloadOutcome:
        """Applies a pending reload; ``reviewed_sha256`` is the new set's hash as the
        confirmer reviewed it (:meth:`get`): another one is refused."""
        require(caller, Role.OPERATOR)
        if not _RELOAD_ID.fullmatch(reload_id):
            raise InvalidInput(Reason.STRING_INVALID, "reload_id is not a reload id")
        if not reviewed_sha256:
            raise InvalidInput(
                Reason.STRING_INVALID,
                "new_sha256 is empty: name the set you reviewed (GetReload, "
                "`paywarden ctl reload --show ID`)",
            )
        action = "policy.reload_confirm"
        with self._live.lock:
            old = self._live.current()
            pending = control_store_call(lambda: self._store.policy_reload(reload_id))
            if pending is None:
                error: PaywardenError = NotFound(Reason.RELOAD_NOT_FOUND, "no such reload")
                raise self._refuse(caller, action, error, reload_id=reload_id) from None
            known = {
                "reload_id": reload_id,
                "proposed_by": pending.proposed_by,
                **_fields(old, pending.new_sha256, None, None),
                "widening": list(pending.widening),
            }
            now = self._deps.now()
            self._check(caller, pending, old, now, known)
            if reviewed_sha256 != pending.new_sha256:
                error = PreconditionFailed(
                    Reason.RELOAD_NOT_REVIEWED,
                    f"the set reviewed ({reviewed_sha256[:64]}) is not the set this reload "
                    f"would put in force ({pending.new_sha256}): review it again "
                    "(`paywarden ctl reload --show ID`) and confirm what it shows",
                )
                raise self._refuse(caller, action, error, **known) from None
            try:
                new = self._build(lambda: self._pack_set(pending))
            except PackError as exc:
                error = PreconditionFailed(
                    Reason.POLICY_PACK_INVALID, f"the proposed packs no longer validate: {exc}"
                )
                raise self._refuse(caller, action, error, **known) from None
            if new.sha256 != pending.new_sha256:
                error = PreconditionFailed(
                    Reason.POLICY_PACK_INVALID, "the stored packs do not make the proposed set"
                )
                raise self._refuse(caller, action, error, **known) from None
            diff = diff_pack_sets(old.packs, new.packs)
            event = audit_events.event(
                action,
                caller,
                now,
                outcome=ReloadState.APPLIED,
                **{**known, **_fields(old, new.sha256, new.refs(), diff)},
            )
            if not self._put_in_force(new, now, event, (reload_id, caller.id)):
                error = PreconditionFailed(Reason.RELOAD_NOT_PENDING, "the reload is settled")
                raise self._refuse(caller, action, error, **known) from None
            return ReloadOutcome(
                ReloadState.APPLIED,
                old,
                new,
                diff,
                reload_id,
                pending.expires_at,
                pending.proposed_by,
            )

    def _check(
        self,
        caller: Principal,
        pending: PolicyReload,
        old: PolicySet,
        now: int,
        known: dict[str, Any],
    ) -> None:
        """Refuses (and audits) a confirmation that may not apply the reload."""
        action = "policy.reload_confirm"
        if pending.state is not ReloadState.PENDING:
            error: PaywardenError = PreconditionFailed(
                Reason.RELOAD_NOT_PENDING, f"the reload is {pending.state}, not pending"
            )
            raise self._refuse(caller, action, error, **known)
        if pending.proposed_by == caller.id:
            error = Forbidden(
                Reason.RELOAD_SAME_OPERATOR,
                "the operator who proposed a reload cannot confirm it: a second operator must",
            )
            raise self._refuse(caller, action, error, **known)
        lapsed: tuple[ReloadState, PaywardenError] | None = None
        if now >= pending.expires_at:
            lapsed = (
                ReloadState.EXPIRED,
                PreconditionFailed(Reason.RELOAD_EXPIRED, "the reload expired; propose it again"),
            )
        elif pending.old_sha256 != old.sha256:
            lapsed = (
                ReloadState.SUPERSEDED,
                PreconditionFailed(
                    Reason.RELOAD_STALE,
                    "the packs in force changed since the reload was proposed; propose it again",
                ),
            )
        if lapsed is not None:
            state, error = lapsed
            event = audit_events.event(
                action,
                caller,
                now,
                outcome=ReloadState.REJECTED,
                reason=error.reason,
                error=error.message,
                settled=state,
                **known,
            )
            control_store_call(lambda: self._store.settle_reload(pending.id, state, now, event))
            raise error

    def _pack_set(self, pending: PolicyReload) -> PackSet:
        packs = [
            parse_pack(text.encode("utf-8"), self._directory / name) for name, text in pending.packs
        ]
        return build_pack_set(packs, self._groups)
