"""Payment key versions through their lifecycle: register, rotate, revoke, destroy.

A version is ``active`` (signs), ``verify-only`` (listed in the JWKS, signs nothing),
``revoked`` (listed with its revocation time, signs nothing) or ``destroyed`` (its
objects deleted from the token, no longer listed). It only ever moves forward. The
rules are here; the store keeps the rows and appends each change's audit record in
the same transaction (:class:`~paywarden.signer.store.protocols.KeyTx`). The token
work (generating a key pair inside the HSM, deleting one) is handed in by the custody
command (:mod:`paywarden.signer.cli.keys`), so that this module runs the same over a
real token and in a test.

Registration (:func:`register_configured`) runs at every start-up and reopen of the
token: a configured key that is on the token and not yet in the store is recorded as
active. Only a label the store has never seen is registered (every configured version
of it at once: the configuration may name two versions that both sign, as before key
versions had states). A configured version of a label the store knows already is never
registered, so a rotated, revoked or destroyed version is never made active again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paywarden.hsm import KeyRef, PublicKeyInfo
from paywarden.hsm.evm_keys import spki_profile
from paywarden.policy.vocabulary import KeyProfile, KeyState
from paywarden.signer.core import audit_events
from paywarden.signer.store.key_protocols import KeyStore, KeyTx
from paywarden.signer.store.records import InvariantBroken, KeyVersion

DEFAULT_GRACE_HOURS = 24.0
MAX_REASON = 1024


class CustodyRefused(Exception):
    """A custody command that must not run: the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Registered:
    """What one registration pass did."""

    added: list[str]  # key ids recorded as active now
    skipped: list[str]  # configured versions of a label the store already manages


def fingerprint(spki_der: bytes) -> str:
    return hashlib.sha256(spki_der).hexdigest()


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_version(info: PublicKeyInfo, now: int) -> KeyVersion:
    return KeyVersion(
        key_id=info.key_id,
        label=info.ref.label,
        version=info.ref.version,
        state=KeyState.ACTIVE,
        spki_der=info.spki_der,
        created_at=now,
        state_changed_at=now,
    )


def register_configured(
    store: KeyStore, found: Sequence[PublicKeyInfo], now: int, actor: Mapping[str, str]
) -> Registered:
    """Records the configured keys read from the token (``found``) that the store does
    not hold yet, as active, each with a ``key.register`` audit record (insert if absent:
    see the module docstring for which)."""
    added: list[str] = []
    skipped: list[str] = []
    with store.key_tx() as tx:
        known = {info.ref.label: bool(tx.versions(info.ref.label)) for info in found}
        for info in found:
            if tx.version(info.key_id) is not None:
                continue
            if known[info.ref.label]:
                skipped.append(info.key_id)
                continue
            if tx.add(_new_version(info, now)):
                tx.audit(
                    _event(
                        "key.register",
                        actor,
                        now,
                        key_id=info.key_id,
                        state=KeyState.ACTIVE,
                        spki_sha256=fingerprint(info.spki_der),
                    )
                )
                added.append(info.key_id)
    return Registered(added, skipped)


def rotate(
    store: KeyStore,
    label: str,
    generate: Callable[[KeyRef, KeyProfile], PublicKeyInfo],
    now: int,
    actor: Mapping[str, str],
    *,
    audit_label: str | None = None,
) -> tuple[KeyVersion, list[str]]:
    """Generates ``<label>.v<N+1>`` (``generate``: inside the HSM, never extractable) of
    the label's profile (the curve of its versions: a ``jws-es256`` label gets a P-256
    version, an ``x402-exact-evm`` one a secp256k1 version) and makes it the label's
    active version; every version active until now becomes verify-only, in the same
    transaction as the new one's row and the audit record. Returns the new version and
    the ids made verify-only."""
    if label == audit_label:
        raise CustodyRefused(f"{label} is the audit key's label: it is never a payment key")
    with store.key_tx() as tx:
        versions = tx.versions(label)
        if not versions:
            raise CustodyRefused(
                f"no version of key {label!r} is registered in the store: configure it "
                "(keys = [...]) and start the signer once, or check the label"
            )
        profile = _profile(label, versions)
        ref = KeyRef(label, max(v.version for v in versions) + 1)
        info = generate(ref, profile)
        if spki_profile(info.spki_der) is not profile:
            raise CustodyRefused(f"key {ref.key_id} was not generated as a {profile} key")
        new = _new_version(info, now)
        if not tx.add(new):
            raise CustodyRefused(f"key {ref.key_id} is already registered")
        demoted = [v.key_id for v in versions if v.state is KeyState.ACTIVE]
        for key_id in demoted:
            if not tx.set_state(key_id, {KeyState.ACTIVE}, KeyState.VERIFY_ONLY, now):
                raise CustodyRefused(f"key {key_id} changed state during the rotation")
        tx.audit(
            _event(
                "key.rotate",
                actor,
                now,
                label=label,
                key_id=new.key_id,
                profile=profile,
                state=KeyState.ACTIVE,
                spki_sha256=fingerprint(new.spki_der),
                verify_only=demoted,
            )
        )
    return new, demoted


def _profile(label: str, versions: Sequence[KeyVersion]) -> KeyProfile:
    """The profile every version of ``label`` shares (a label has one profile)."""
    found = {spki_profile(v.spki_der) for v in versions}
    named = ", ".join(sorted(str(p or "no profile's curve") for p in found))
    profile = found.pop() if len(found) == 1 else None
    if profile is None:
        raise CustodyRefused(f"the versions of key {label!r} are not of one profile ({named})")
    return profile


def revoke(
    store: KeyStore, key_id: str, reason: str, now: int, actor: Mapping[str, str]
) -> KeyVersion:
    """Revokes an active or verify-only version: it signs nothing from the next request
    on (the Sign path reads its state in the deciding transaction) and the JWKS lists it
    as revoked, with the time."""
    if len(reason) > MAX_REASON or any(ord(c) < 0x20 for c in reason):
        raise CustodyRefused(f"the reason must be at most {MAX_REASON} printable characters")
    with store.key_tx() as tx:
        current = _known(tx, key_id)
        if current.state in (KeyState.REVOKED, KeyState.DESTROYED):
            raise CustodyRefused(f"key {key_id} is {current.state} already")
        if not tx.set_state(key_id, {current.state}, KeyState.REVOKED, now, reason):
            raise CustodyRefused(f"key {key_id} changed state during the revocation")
        tx.audit(
            _event(
                "key.revoke",
                actor,
                now,
                key_id=key_id,
                previous=current.state,
                state=KeyState.REVOKED,
                reason=reason,
            )
        )
        revoked = tx.version(key_id)
    if revoked is None:
        raise InvariantBroken(f"key {key_id} vanished in the transaction that revoked it")
    return revoked


def destroy(
    store: KeyStore,
    key_id: str,
    grace_seconds: int,
    delete: Callable[[KeyRef], int],
    now: int,
    actor: Mapping[str, str],
) -> int:
    """Deletes a verify-only or revoked version's private and public objects from the
    token (``delete`` returns how many it deleted) once ``grace_seconds`` have passed
    since it stopped being active, and records it destroyed. Refuses an active version,
    a destroyed one, and one still in its grace period. Returns the objects deleted."""
    with store.key_tx() as tx:
        current = _known(tx, key_id)
        if current.state is KeyState.ACTIVE:
            raise CustodyRefused(
                f"key {key_id} is active: rotate or revoke it first, then destroy it after "
                "its grace period"
            )
        if current.state is KeyState.DESTROYED:
            raise CustodyRefused(f"key {key_id} is destroyed already")
        since = current.retired_at if current.retired_at is not None else current.created_at
        if now < since + grace_seconds:
            raise CustodyRefused(
                f"key {key_id} is {current.state} since {_when(since)}: its grace period of "
                f"{grace_seconds / 3600:g} h ends at {_when(since + grace_seconds)}; "
                "refusing to destroy it before then"
            )
        deleted = delete(KeyRef.parse(key_id))
        if not tx.set_state(key_id, {current.state}, KeyState.DESTROYED, now):
            raise CustodyRefused(f"key {key_id} changed state during the destruction")
        tx.audit(
            _event(
                "key.destroy",
                actor,
                now,
                key_id=key_id,
                previous=current.state,
                state=KeyState.DESTROYED,
                objects_deleted=deleted,
            )
        )
    return deleted


def _known(tx: KeyTx, key_id: str) -> KeyVersion:
    current = tx.version(key_id)
    if current is None:
        raise CustodyRefused(f"key {key_id} is not registered in the store")
    return current


def _event(action: str, actor: Mapping[str, str], now: int, **fields: Any) -> dict[str, Any]:
    out = audit_events.event(action, None, now, **fields)
    out["actor"] = dict(actor)
    return out
