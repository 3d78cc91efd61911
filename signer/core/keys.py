"""The payment keys as the signer sees them: their versions and states, and their public
halves for anyone who checks a signature.

The store holds every version's state (:mod:`paywarden.signer.core.key_custody` changes
them). :class:`KeyView` keeps them in memory, reloaded when this process changed them,
at least every ``limits.freeze_cache_seconds`` for changes made by the custody tools or
another replica, and at once (at most ten times a second) when a request names a key or
label it does not know or the deciding transaction read a version the view does not
hold. It serves the JWKS and the Sign path's early refusal; the decision itself reads the
version's state in its own transaction (:func:`resolve`), so a version revoked by
another process signs nothing from the next request on.

Configured keys the store does not hold yet are registered when the view loads and
the token has them (start-up, or a token that comes up later).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm import EvmPublicKey, Hsm, HsmError, KeyRef, PublicKeyInfo
from paywarden.policy.vocabulary import KeyState
from paywarden.signer.core import key_custody
from paywarden.signer.core.audit_events import SYSTEM
from paywarden.signer.core.refreshing import Refresher
from paywarden.signer.errors import InvalidInput, KeyNotActive, Reason, Unavailable
from paywarden.signer.store.key_protocols import KeyStore
from paywarden.signer.store.protocols import PaymentTx
from paywarden.signer.store.records import KeyVersion

log = logging.getLogger("paywarden.signer.core.keys")

# The JWK members that carry a version's state beside RFC 7517's (JOSE libraries ignore
# members they do not know: RFC 7517 section 4).
JWK_STATE = "paywarden_state"
JWK_REVOKED_AT = "paywarden_revoked_at"
# The longest lifetime (exp - iat) of a payment this signer signs: its max_expiry_seconds.
# An offline verifier bounds a revoked key's backdated payments with it.
JWK_MAX_LIFETIME = "paywarden_max_lifetime"
_FORCED_RELOAD_SECONDS = 0.1  # at most ten reloads a second for unknown names


def label_of(name: str) -> str:
    """The label a key id (``<label>.v<N>``) or a bare label names."""
    try:
        return KeyRef.parse(name).label
    except ValueError:
        return name


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A version listed by GetPublicKeys: its public key and its state."""

    info: PublicKeyInfo
    state: KeyState
    revoked_at: int | None
    max_lifetime: int

    def jwk(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {
            **self.info.jwk(),
            JWK_STATE: str(self.state),
            JWK_MAX_LIFETIME: self.max_lifetime,
        }
        if self.revoked_at is not None:
            out[JWK_REVOKED_AT] = self.revoked_at
        return out


class KeyView:
    """The key versions by id, cheap to ask on every call (thread-safe)."""

    def __init__(
        self,
        store: KeyStore,
        hsm: Hsm,
        configured: Collection[str],
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._configured = frozenset(configured)
        self._unregistered = set(self._configured)  # configured, not seen in the store yet
        self._clock = clock
        self._now = now
        self._versions: dict[str, KeyVersion] = {}
        self._active: dict[str, KeyVersion] = {}  # label -> its (newest) active version
        self._loaded_at = -math.inf
        self._refresher = Refresher(
            self._load, store.key_generation, max_age, clock, fail_closed=True
        )

    def invalidate(self) -> None:
        self._refresher.invalidate()

    def refresh(self, *, unknown: bool = False) -> None:
        """Reloads when stale (:class:`~paywarden.signer.core.refreshing.Refresher`);
        ``unknown``: a request named something the view does not know, reload if the view
        is older than a tenth of a second. Raises :class:`Unavailable` while the keys
        cannot be read."""
        if unknown and (
            self._clock() - self._loaded_at >= _FORCED_RELOAD_SECONDS or self._unregistered
        ):
            self._refresher.invalidate()
        self._refresher.refresh_or_refuse(
            log, "the payment keys", "the payment keys cannot be read; nothing was signed"
        )

    def _load(self) -> None:
        versions = {v.key_id: v for v in self._store.key_versions()}
        self._unregistered -= versions.keys()
        if self._unregistered:  # a token that comes up late: open it now to register its keys
            try:
                self._hsm.ensure_available()
            except HsmError:
                pass  # registered at a later load; Sign refuses meanwhile (HSM_UNAVAILABLE)
        on_token = [
            *self._hsm.public_keys(),
            *(PublicKeyInfo(k.ref, k.spki_der) for k in self._hsm.evm_public_keys()),
        ]
        found = [k for k in on_token if k.key_id in self._unregistered]
        if found:
            done = key_custody.register_configured(self._store, found, self._now(), SYSTEM)
            for key_id in done.skipped:
                log.warning(
                    "key %s is configured but its label has versions in the store already: "
                    "it is not registered (paywarden-keys rotate makes new versions)",
                    key_id,
                )
            self._unregistered -= {*done.added, *done.skipped}
            versions = {v.key_id: v for v in self._store.key_versions()}
        active: dict[str, KeyVersion] = {}
        for v in versions.values():
            newest = active.get(v.label)
            if v.state is KeyState.ACTIVE and (newest is None or v.version > newest.version):
                active[v.label] = v
        self._versions, self._active = versions, active
        self._loaded_at = self._clock()
        # A version that stopped signing is dropped by the HSM client, so that a reopen
        # never needs it (it may be destroyed later).
        self._hsm.forget(k for k, v in versions.items() if v.state is not KeyState.ACTIVE)

    def __contains__(self, name: object) -> bool:
        """Whether a request may name ``name`` (see :meth:`names`); an unknown name
        reloads a view older than a tenth of a second first."""
        if not isinstance(name, str):
            return False
        self.refresh()
        if name in self.names():
            return True
        self.refresh(unknown=True)
        return name in self.names()

    def saw(self, version: KeyVersion) -> None:
        """The deciding transaction read ``version``: a view that disagrees reloads."""
        if self._versions.get(version.key_id) != version:
            self.invalidate()

    def key_ids(self) -> frozenset[str]:
        """Every version's id, as last loaded (a key freeze may name any of them)."""
        try:
            self.refresh()
        except Unavailable:
            pass  # the versions loaded last (the configured keys are known regardless)
        return frozenset(self._versions)

    def names(self) -> frozenset[str]:
        """Every key id and label a request may name (destroyed versions included: they
        are refused as not active, not as unknown)."""
        versions = self._versions
        return frozenset(versions) | {v.label for v in versions.values()}

    def check(self, name: str) -> None:
        """The Sign path's early refusal: :class:`InvalidInput` (``UNKNOWN_KEY``) for a
        name that is no payment key, :class:`KeyNotActive` for one with no active version."""
        if name not in self:
            raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is not a payment key of this signer")
        if self._named_active(name) is None:
            self.refresh(unknown=True)
            if self._named_active(name) is None:
                raise KeyNotActive(Reason.KEY_NOT_ACTIVE, _not_active(name, self._versions))

    def _named_active(self, name: str) -> KeyVersion | None:
        version = self._versions.get(name)
        if version is not None:
            return version if version.state is KeyState.ACTIVE else None
        return self._active.get(name)

    def published(self, max_lifetime: int) -> list[PublishedKey]:
        """The ``jws-es256`` versions not destroyed (the JWKS is P-256 only)."""
        self.refresh()
        out = []
        for v in sorted(self._versions.values(), key=lambda v: (v.label, v.version)):
            if v.state is KeyState.DESTROYED or _is_evm(v):
                continue
            info = PublicKeyInfo(KeyRef(v.label, v.version), v.spki_der)
            out.append(PublishedKey(info, v.state, v.revoked_at, max_lifetime))
        return out

    def evm_published(self) -> list[tuple[EvmPublicKey, KeyState]]:
        """The ``x402-exact-evm`` versions not destroyed, with their addresses."""
        self.refresh()
        out: list[tuple[EvmPublicKey, KeyState]] = []
        for v in sorted(self._versions.values(), key=lambda v: (v.label, v.version)):
            if v.state is not KeyState.DESTROYED and _is_evm(v):
                out.append((evm_key_of(KeyRef(v.label, v.version), v.spki_der), v.state))
        return out


def _is_evm(version: KeyVersion) -> bool:
    key = serialization.load_der_public_key(version.spki_der)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256K1)


def evm_address(version: KeyVersion) -> str:
    """The Ethereum address of an ``x402-exact-evm`` version; :class:`InvalidInput`
    (``UNKNOWN_KEY``) for a version of another profile."""
    if not _is_evm(version):
        raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is not an x402-exact-evm key")
    return evm_key_of(KeyRef(version.label, version.version), version.spki_der).address


def evm_key_of(ref: KeyRef, spki_der: bytes) -> EvmPublicKey:
    """The ``x402-exact-evm`` public key stored as ``spki_der``."""
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"key {ref.key_id} is not an EC key")
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return EvmPublicKey(ref, point)


def resolve(tx: PaymentTx, name: str) -> KeyVersion:
    """The version a Sign names (a key id, or a label for its active version), read in
    the deciding transaction: one index probe. Raises :class:`KeyNotActive` unless it is
    active, :class:`InvalidInput` (``UNKNOWN_KEY``) if the store has no such key."""
    if "." in name:
        version = tx.key_version(name)
        if version is None:
            raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is not a payment key of this signer")
        if version.state is not KeyState.ACTIVE:
            raise KeyNotActive(
                Reason.KEY_NOT_ACTIVE, f"key {name} is {version.state}; it signs nothing"
            )
        return version
    active = tx.active_key(name)
    if active is None:
        raise KeyNotActive(Reason.KEY_NOT_ACTIVE, f"key {name!r} has no active version")
    return active


def _not_active(name: str, versions: dict[str, KeyVersion]) -> str:
    version = versions.get(name)
    if version is not None:
        return f"key {name} is {version.state}; it signs nothing"
    return f"key {name!r} has no active version"


class PublicKeys:
    """GetPublicKeys: the active, verify-only and revoked versions (destroyed ones are not
    listed), each with its state, a revoked one with its revocation time, and each with
    ``max_lifetime``, the longest lifetime this signer gives a payment."""

    def __init__(self, view: KeyView, max_lifetime: int) -> None:
        self._view = view
        self._max_lifetime = max_lifetime

    def public_keys(self) -> list[PublishedKey]:
        keys = self._view.published(self._max_lifetime)
        if not keys:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the public keys have not been read yet")
        return keys

    def evm_keys(self) -> list[tuple[EvmPublicKey, KeyState]]:
        """The ``x402-exact-evm`` versions (not in the JWKS), with their addresses."""
        return self._view.evm_published()

    def jwks(self) -> str:
        return json.dumps({"keys": [k.jwk() for k in self.public_keys()]}, sort_keys=True)
