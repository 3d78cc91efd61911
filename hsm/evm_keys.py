"""``x402-exact-evm`` keys on the token: secp256k1 key pairs that sign EIP-3009
authorisations, and nothing else.

A key's profile is its curve (CKA_EC_PARAMS): P-256 for ``jws-es256``, secp256k1 for
``x402-exact-evm``. :class:`EvmSigning` is the part of :class:`paywarden.hsm.Hsm` that
holds and uses the secp256k1 keys (a mixin: the session, its lock and its recovery
stay in token.py). It signs only the EIP-712 digest of a ``TransferWithAuthorization``
from the key's own address, computed here from the typed values, so no caller can
have an arbitrary digest signed; the token's r||s becomes Ethereum's low-s (r, s, v)
and is returned only if it verifies under the key's public key.
"""

from __future__ import annotations

from typing import Any, NoReturn

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm.eip712 import Eip712Domain, TransferWithAuthorization, transfer_digest
from paywarden.hsm.errors import HsmUnavailable, KeyNotFound, UnsafeKey
from paywarden.hsm.evm import EvmPublicKey, EvmSignature, normalise
from paywarden.hsm.guard import PKCS11_LOCK, key_pair
from paywarden.hsm.keys import KeyRef
from paywarden.policy.vocabulary import KeyProfile
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

CURVES = {KeyProfile.JWS_ES256: "secp256r1", KeyProfile.X402_EXACT_EVM: "secp256k1"}
"""The curve (its SEC 2 name) a key of each profile is generated on."""


def curve_parameters(profile: KeyProfile) -> bytes:
    """CKA_EC_PARAMS of a key of ``profile``: the DER OID of its named curve."""
    return bytes(encode_named_curve_parameters(CURVES[profile]))


def profile_of(key: Any) -> KeyProfile | None:
    """The profile whose curve ``key`` (a token object) is on; None for another curve
    or unreadable parameters."""
    try:
        params = bytes(key[Attribute.EC_PARAMS])
    except pkcs11.exceptions.PKCS11Error:
        return None
    for profile in CURVES:
        if params == curve_parameters(profile):
            return profile
    return None


def spki_profile(spki_der: bytes) -> KeyProfile | None:
    """The profile whose curve the DER SubjectPublicKeyInfo ``spki_der`` is on (as the
    signer's store keeps a version's public key); None for another key or curve."""
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return None
    for profile, curve in CURVES.items():
        if key.curve.name == curve:
            return profile
    return None


def evm_public_key(ref: KeyRef, pub: Any) -> EvmPublicKey:
    """The public half of an ``x402-exact-evm`` key pair, read from its token object."""
    key = serialization.load_der_public_key(encode_ec_public_key(pub))
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256K1):
        raise UnsafeKey(f"key {ref.key_id} is not a secp256k1 ({KeyProfile.X402_EXACT_EVM}) key")
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return EvmPublicKey(ref, point)


def load_evm_key(session: Any, ref: KeyRef, token_label: str) -> tuple[Any, EvmPublicKey]:
    """The private key object and the public key of ``ref``, refused unless it is a
    secp256k1 key pair that may only sign and never leave the token. Call with
    ``PKCS11_LOCK`` held."""
    priv, pub = key_pair(session, ref, token_label)
    if profile_of(priv) is not KeyProfile.X402_EXACT_EVM:
        raise UnsafeKey(f"key {ref.key_id} is not a secp256k1 ({KeyProfile.X402_EXACT_EVM}) key")
    return priv, evm_public_key(ref, pub)


class EvmSigning:
    """The ``x402-exact-evm`` keys of :class:`paywarden.hsm.Hsm` (mixed into it)."""

    _token_label: str
    _session: Any
    _evm_refs: dict[str, KeyRef]
    _evm_private: dict[str, Any]
    _evm_public: dict[str, EvmPublicKey]

    def _ensure_open_locked(self) -> None:
        raise NotImplementedError  # Hsm's

    def _fail_locked(self, reason: str) -> NoReturn:
        raise NotImplementedError  # Hsm's

    def _load_evm_keys_locked(self, session: Any) -> tuple[dict[str, Any], dict[str, EvmPublicKey]]:
        private: dict[str, Any] = {}
        public: dict[str, EvmPublicKey] = {}
        for key_id, ref in self._evm_refs.items():
            private[key_id], public[key_id] = load_evm_key(session, ref, self._token_label)
        return private, public

    def _evm_key_locked(self, key_id: str) -> tuple[Any, EvmPublicKey]:
        """The private key object and public key of ``key_id``, read from the open
        session and kept if not held yet. A key of another profile (the audit key, a
        ``jws-es256`` key) is as unknown here as a missing one; a missing or unsafe key
        is refused without dropping the session: the token itself is fine."""
        private = self._evm_private.get(key_id)
        public = self._evm_public.get(key_id)
        if private is not None and public is not None:
            return private, public
        try:
            ref = KeyRef.parse(key_id)
        except ValueError:
            raise KeyNotFound(f"{key_id!r} is not a payment key id") from None
        try:
            found = list(
                self._session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.LABEL: ref.label,
                        Attribute.ID: ref.cka_id,
                    }
                )
            )
            if not found or (
                len(found) == 1 and profile_of(found[0]) is not KeyProfile.X402_EXACT_EVM
            ):
                raise KeyNotFound(
                    f"{key_id!r} is not an {KeyProfile.X402_EXACT_EVM} key on the token"
                )
            private, public = load_evm_key(self._session, ref, self._token_label)
        except pkcs11.exceptions.PKCS11Error as exc:
            self._fail_locked(f"cannot read key {key_id}: {type(exc).__name__}")
        self._evm_refs[key_id] = ref
        self._evm_private[key_id] = private
        self._evm_public[key_id] = public
        return private, public

    def evm_public_keys(self) -> list[EvmPublicKey]:
        """The ``x402-exact-evm`` public keys read at the last successful open or looked
        up since."""
        with PKCS11_LOCK:
            return [self._evm_public[k] for k in sorted(self._evm_public)]

    def sign_transfer_authorization(
        self, key_id: str, domain: Eip712Domain, authorization: TransferWithAuthorization
    ) -> EvmSignature:
        """The key's Ethereum signature (low s, recovery id) of the EIP-712 digest of
        ``authorization`` under ``domain``.

        ``authorization.from_address`` must be the key's own address (:class:`UnsafeKey`
        otherwise: a key authorises transfers of its own funds only; the store and the
        token disagree on the key, and nothing is signed). A version
        that was not read at open (one rotated in while the signer runs, or after its
        configured version was retired) is looked up on the token by label and CKA_ID
        now, checked as at open (secp256k1, sign-only, never extractable) and kept:
        whether it may sign is the caller's to decide (its state is in the store).
        Raises :class:`KeyNotFound` for a key id that is no ``x402-exact-evm`` key on
        the token (missing, or of another profile), :class:`UnsafeKey` for one that
        fails the checks, and
        :class:`HsmUnavailable` when the token cannot sign now or returns a signature
        that does not recover the key.
        """
        with PKCS11_LOCK:
            self._ensure_open_locked()
            private, public = self._evm_key_locked(key_id)
            if authorization.from_address != public.address:
                raise UnsafeKey(
                    f"key {key_id} signs transfers from {public.address} only, "
                    f"not from {authorization.from_address}"
                )
            digest = transfer_digest(domain, authorization)
            try:
                raw: bytes = private.sign(digest, mechanism=Mechanism.ECDSA)
            except pkcs11.exceptions.PKCS11Error as exc:
                self._fail_locked(f"signing failed: {type(exc).__name__}")
        try:
            return normalise(digest, raw, public.point)
        except ValueError as exc:
            raise HsmUnavailable(
                f"key {key_id}: the token's signature is unusable: {exc}"
            ) from None
