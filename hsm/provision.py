"""Key custody operations for the security team's scripts (``scripts/``).

No network API reaches this module: the service only signs and exports
public keys. Every operation here is idempotent and reports what it did.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import pkcs11
from paywarden.hsm.errors import HsmError, HsmUnavailable, KeyNotFound, UnsafeKey
from paywarden.hsm.evm import EvmPublicKey
from paywarden.hsm.evm_keys import curve_parameters, evm_public_key, profile_of
from paywarden.hsm.guard import PKCS11_LOCK
from paywarden.hsm.keys import KeyRef, PublicKeyInfo
from paywarden.policy.vocabulary import KeyProfile
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key

_CKF_TOKEN_INITIALIZED = 0x400
_CK_ULONG = ctypes.c_ulong


class _TokenInfo(ctypes.Structure):
    # CK_TOKEN_INFO up to the flags field; the rest is read into padding.
    _fields_ = (
        ("label", ctypes.c_char * 32),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial_number", ctypes.c_char * 16),
        ("flags", _CK_ULONG),
        ("rest", ctypes.c_ubyte * 256),
    )


def _rv(name: str, rv: int) -> None:
    if rv != 0:
        raise HsmError(f"{name} failed with CKR 0x{rv:08x}")


def _lib(module: str) -> Any:
    try:
        return pkcs11.lib(module)
    except (pkcs11.exceptions.PKCS11Error, OSError, RuntimeError) as exc:
        raise HsmUnavailable(f"cannot load the PKCS#11 module {module}: {exc}") from None


def token_exists(module: str, label: str) -> bool:
    with PKCS11_LOCK:
        lib = _lib(module)
        return any(True for _ in lib.get_tokens(token_label=label))


def module_manufacturer(module: str) -> str:
    """The module's manufacturer, as its ``C_GetInfo`` names it (``SoftHSM`` for SoftHSM2)."""
    with PKCS11_LOCK:
        return str(_lib(module).manufacturer_id).strip()


def init_token(module: str, label: str, so_pin: str, user_pin: str) -> bool:
    """Initialises a free slot's token with ``label`` and sets the user PIN.

    Returns False when a token with this label already exists (nothing done).
    python-pkcs11 has no ``C_InitToken``, and ``softhsm2-util`` would need the
    PINs on its command line, so the call is made here through ctypes.
    Call it before anything else in the process has loaded ``module``.
    """
    if len(label.encode("utf-8")) > 32:
        raise HsmError("token label is longer than 32 bytes")
    with PKCS11_LOCK:
        if token_exists(module, label):
            return False
        pkcs11.lib(module).finalize()
        so = ctypes.CDLL(module)
        _rv("C_Initialize", so.C_Initialize(None))
        try:
            count = _CK_ULONG(0)
            _rv("C_GetSlotList", so.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)))
            slots = (_CK_ULONG * count.value)()
            _rv("C_GetSlotList", so.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)))
            free = None
            for slot in slots[: count.value]:
                info = _TokenInfo()
                _rv("C_GetTokenInfo", so.C_GetTokenInfo(_CK_ULONG(slot), ctypes.byref(info)))
                if not info.flags & _CKF_TOKEN_INITIALIZED:
                    free = slot
                    break
            if free is None:
                raise HsmError("no free slot to initialise a token in")
            so_pin_b = so_pin.encode("utf-8")
            label_b = label.encode("utf-8").ljust(32, b" ")
            _rv(
                "C_InitToken",
                so.C_InitToken(
                    _CK_ULONG(free), so_pin_b, _CK_ULONG(len(so_pin_b)), ctypes.c_char_p(label_b)
                ),
            )
        finally:
            so.C_Finalize(None)
        lib = pkcs11.lib(module)  # initialises again and sees the new token
        token = lib.get_token(token_label=label)
        session = token.open(rw=True, so_pin=so_pin)
        try:
            session.init_pin(user_pin)
        finally:
            session.close()
    return True


def _find(session: Any, ref: KeyRef, object_class: ObjectClass) -> Any | None:
    found = list(
        session.get_objects(
            {Attribute.CLASS: object_class, Attribute.LABEL: ref.label, Attribute.ID: ref.cka_id}
        )
    )
    if len(found) > 1:
        raise UnsafeKey(f"key {ref.key_id} is on the token more than once")
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class KeyStatus:
    ref: KeyRef
    sensitive: bool
    extractable: bool
    never_extractable: bool
    always_sensitive: bool
    can_sign: bool
    can_decrypt: bool
    private: bool  # CKA_PRIVATE: usable only after login
    modifiable: bool  # CKA_MODIFIABLE: attributes can be changed after generation
    profile: KeyProfile | None  # by its curve; None: a curve no profile uses

    @property
    def safe(self) -> bool:
        """What the signer requires of a key it opens (hsm/token.py checks more)."""
        return (
            self.sensitive
            and self.always_sensitive
            and not self.extractable
            and self.never_extractable
            and self.can_sign
            and not self.can_decrypt
            and self.private
            and not self.modifiable
        )


def _status(ref: KeyRef, priv: Any) -> KeyStatus:
    return KeyStatus(
        ref=ref,
        sensitive=bool(priv[Attribute.SENSITIVE]),
        extractable=bool(priv[Attribute.EXTRACTABLE]),
        never_extractable=bool(priv[Attribute.NEVER_EXTRACTABLE]),
        always_sensitive=bool(priv[Attribute.ALWAYS_SENSITIVE]),
        can_sign=bool(priv[Attribute.SIGN]),
        can_decrypt=bool(priv[Attribute.DECRYPT]),
        private=bool(priv[Attribute.PRIVATE]),
        modifiable=bool(priv[Attribute.MODIFIABLE]),
        profile=profile_of(priv),
    )


def _open(module: str, token_label: str, user_pin: str, rw: bool) -> Any:
    try:
        token = _lib(module).get_token(token_label=token_label)
        return token.open(rw=rw, user_pin=user_pin)
    except pkcs11.exceptions.NoSuchToken:
        raise HsmUnavailable(f"no token labelled {token_label!r}") from None
    except pkcs11.exceptions.PinIncorrect:
        raise HsmUnavailable(f"login to token {token_label!r} refused: PIN incorrect") from None
    except pkcs11.exceptions.PKCS11Error as exc:
        raise HsmUnavailable(f"cannot open token {token_label!r}: {type(exc).__name__}") from None


def generate_key(
    module: str,
    token_label: str,
    user_pin: str,
    ref: KeyRef,
    profile: KeyProfile = KeyProfile.JWS_ES256,
) -> tuple[bool, KeyStatus]:
    """Generates an EC key pair of ``profile`` inside the token (P-256 for
    ``jws-es256``, secp256k1 for ``x402-exact-evm``), unless it exists; an existing
    key of another profile is refused (:class:`UnsafeKey`).

    The private key is sensitive, never extractable, may only sign, and is not
    modifiable: nobody holding the user PIN can later turn on DERIVE, DECRYPT
    or another use (SoftHSM2 refuses to set CKA_MODIFIABLE after generation,
    so keys made before this need a new version). Returns (created, status).
    """
    with PKCS11_LOCK:
        session = _open(module, token_label, user_pin, rw=True)
        try:
            existing = _find(session, ref, ObjectClass.PRIVATE_KEY)
            if existing is not None:
                status = _status(ref, existing)
                if status.profile is not profile:
                    raise UnsafeKey(
                        f"key {ref.key_id} is on the token already as a "
                        f"{status.profile or 'non-profile'} key, not {profile}"
                    )
                return False, status
            if _find(session, ref, ObjectClass.PUBLIC_KEY) is not None:
                raise UnsafeKey(f"public key {ref.key_id} exists without its private key")
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: curve_parameters(profile)},
                local=True,
            )
            _pub, priv = params.generate_keypair(
                store=True,
                label=ref.label,
                id=ref.cka_id,
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.DERIVE: False,
                },
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                    Attribute.SIGN_RECOVER: False,
                    Attribute.MODIFIABLE: False,
                },
            )
            return True, _status(ref, priv)
        finally:
            session.close()


def list_keys(module: str, token_label: str, user_pin: str) -> list[KeyStatus]:
    """Every EC private key on the token whose label and id name a payment key."""
    out: list[KeyStatus] = []
    with PKCS11_LOCK:
        session = _open(module, token_label, user_pin, rw=False)
        try:
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                try:
                    version_text = bytes(obj[Attribute.ID]).decode("ascii")
                    if not version_text.startswith("v"):
                        continue
                    ref = KeyRef(str(obj[Attribute.LABEL]), int(version_text[1:]))
                except (ValueError, UnicodeDecodeError):
                    continue  # not one of ours
                out.append(_status(ref, obj))
        finally:
            session.close()
    return sorted(out, key=lambda s: (s.ref.label, s.ref.version))


def export_public_key(module: str, token_label: str, user_pin: str, ref: KeyRef) -> PublicKeyInfo:
    with PKCS11_LOCK:
        session = _open(module, token_label, user_pin, rw=False)
        try:
            pub = _find(session, ref, ObjectClass.PUBLIC_KEY)
            if pub is None:
                raise KeyNotFound(f"key {ref.key_id} is not on token {token_label!r}")
            if profile_of(pub) is KeyProfile.X402_EXACT_EVM:
                raise HsmError(
                    f"key {ref.key_id} is an {KeyProfile.X402_EXACT_EVM} key: export its address"
                )
            info = PublicKeyInfo(ref, encode_ec_public_key(pub))
            info.public_key()
            return info
        finally:
            session.close()


def export_evm_public_key(
    module: str, token_label: str, user_pin: str, ref: KeyRef
) -> EvmPublicKey:
    """The public key, and so the address, of an ``x402-exact-evm`` key."""
    with PKCS11_LOCK:
        session = _open(module, token_label, user_pin, rw=False)
        try:
            pub = _find(session, ref, ObjectClass.PUBLIC_KEY)
            if pub is None:
                raise KeyNotFound(f"key {ref.key_id} is not on token {token_label!r}")
            return evm_public_key(ref, pub)
        finally:
            session.close()


def generate_new_key(
    module: str,
    token_label: str,
    user_pin: str,
    ref: KeyRef,
    profile: KeyProfile = KeyProfile.JWS_ES256,
) -> PublicKeyInfo:
    """Generates a new version of ``profile`` inside the token (as :func:`generate_key`:
    sensitive, never extractable, sign-only) and returns its public half (for an
    ``x402-exact-evm`` key, its secp256k1 SubjectPublicKeyInfo, as the signer's store
    keeps it); refuses a version that is on the token already, so that a rotation
    never makes active a key it did not make."""
    created, status = generate_key(module, token_label, user_pin, ref, profile)
    if not created:
        raise UnsafeKey(
            f"key {ref.key_id} is on token {token_label!r} already but not registered: "
            "a rotation only activates a key it generates"
        )
    if not status.safe or status.profile is not profile:
        raise UnsafeKey(f"key {ref.key_id} was generated unsafe: {status}")
    if profile is KeyProfile.X402_EXACT_EVM:
        evm = export_evm_public_key(module, token_label, user_pin, ref)
        return PublicKeyInfo(ref, evm.spki_der)
    return export_public_key(module, token_label, user_pin, ref)


def delete_key(module: str, token_label: str, user_pin: str, ref: KeyRef) -> int:
    """Destroys the key pair's private and public objects on the token (C_DestroyObject);
    returns how many objects it destroyed (0 when neither is there any more)."""
    deleted = 0
    with PKCS11_LOCK:
        session = _open(module, token_label, user_pin, rw=True)
        try:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                found = _find(session, ref, object_class)
                if found is not None:
                    found.destroy()
                    deleted += 1
        except pkcs11.exceptions.PKCS11Error as exc:
            raise HsmError(f"cannot destroy key {ref.key_id}: {type(exc).__name__}") from None
        finally:
            session.close()
    return deleted
