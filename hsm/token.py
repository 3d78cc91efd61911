"""One logged-in PKCS#11 session per process, every call serialised.

python-pkcs11 calls ``C_Initialize(NULL)``: the library is told that it will
not be called from several threads at once, and SoftHSM2 crashes when it is.
So every PKCS#11 call in this process goes through ``PKCS11_LOCK``
(:mod:`paywarden.hsm.guard`, with the attribute table every key is checked against).

After a PKCS#11 error the session is dropped and the library re-initialised
on the next use (at most once per ``retry_interval``); until that succeeds,
every signing call raises :class:`HsmUnavailable`. Nothing is signed while
the token is in doubt.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pkcs11
from paywarden.hsm.audit_bodies import (
    CHECKPOINT_FIELDS,
    CHECKPOINT_TYPE,
    RECEIPT_FIELDS,
    RECEIPT_TYPE,
    audit_body,
    mandate_receipt_input,
)
from paywarden.hsm.errors import (
    HsmError,
    HsmPinRejected,
    HsmUnavailable,
    KeyNotFound,
    UnsafeKey,
)
from paywarden.hsm.evm import EvmPublicKey
from paywarden.hsm.evm_keys import EvmSigning
from paywarden.hsm.guard import PKCS11_LOCK, key_pair
from paywarden.hsm.keys import KeyRef, PublicKeyInfo
from pkcs11 import Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key

MAX_PIN_BYTES = 4096


def read_pin(pin_file: Path | None, pin_env: str | None, pin_fd: int | None = None) -> str:
    """Reads the user PIN from a file, an inherited file descriptor or an
    environment variable, never argv.

    Errors name the source, never the value.
    """
    if pin_file is not None:
        try:
            pin = pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HsmUnavailable(
                f"cannot read the HSM PIN file {pin_file}: {exc.strerror}"
            ) from None
        if not pin:
            raise HsmUnavailable(f"the HSM PIN file {pin_file} is empty")
        return pin
    if pin_fd is not None:
        return _read_pin_fd(pin_fd)
    if pin_env is not None:
        # Popped so that child processes started later do not inherit it. This
        # does NOT hide it: /proc/<pid>/environ shows the environment the process
        # was started with, PIN included, to its user and root for as long as it
        # runs. Prefer a PIN file or an inherited file descriptor.
        pin = os.environ.pop(pin_env, "").strip()
        if not pin:
            raise HsmUnavailable(f"the environment variable {pin_env} (HSM PIN) is not set")
        return pin
    raise HsmUnavailable("no HSM PIN source configured (pin_file, pin_fd or pin_env)")


def _read_pin_fd(fd: int) -> str:
    """Reads the PIN to end of file from an inherited descriptor (a pipe, or a file
    opened by the parent) and closes it, so that nothing else in the process or
    its children can read it again."""
    chunks: list[bytes] = []
    try:
        while sum(map(len, chunks)) <= MAX_PIN_BYTES:
            chunk = os.read(fd, MAX_PIN_BYTES + 1)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise HsmUnavailable(
            f"cannot read the HSM PIN from file descriptor {fd}: {exc.strerror}"
        ) from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # already closed or never open: the read above said which
    raw = b"".join(chunks)
    if len(raw) > MAX_PIN_BYTES:
        raise HsmUnavailable(f"file descriptor {fd} holds more than an HSM PIN")
    try:
        pin = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HsmUnavailable(f"the HSM PIN from file descriptor {fd} is not UTF-8") from None
    if not pin:
        raise HsmUnavailable(f"file descriptor {fd} gave an empty HSM PIN")
    return pin


class Hsm(EvmSigning):
    """Signs with payment keys held in a PKCS#11 token.

    ``keys`` are ``jws-es256`` keys (P-256, :meth:`sign_es256`); ``evm_keys`` are
    ``x402-exact-evm`` keys (secp256k1, :meth:`sign_transfer_authorization`, in
    :mod:`paywarden.hsm.evm_keys`). A label belongs to one profile only.
    """

    def __init__(
        self,
        module: str,
        token_label: str,
        pin: str,
        keys: Sequence[KeyRef],
        *,
        audit_key: KeyRef | None = None,
        evm_keys: Sequence[KeyRef] = (),
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._module = module
        self._token_label = token_label
        self.__pin = pin
        self._refs = {ref.key_id: ref for ref in keys}
        if audit_key is not None and audit_key.key_id in self._refs:
            raise ValueError(f"key {audit_key.key_id} cannot be both a payment and the audit key")
        self._audit_ref = audit_key
        self._evm_refs = {ref.key_id: ref for ref in evm_keys}
        jws_labels = {ref.label for ref in [*keys, *([audit_key] if audit_key else [])]}
        for ref in evm_keys:
            if ref.label in jws_labels:
                raise ValueError(f"key {ref.key_id}: label {ref.label!r} names a jws-es256 key")
        self._evm_private: dict[str, Any] = {}
        self._evm_public: dict[str, EvmPublicKey] = {}
        self._retry_interval = retry_interval
        self._clock = clock
        self._session: Any = None
        self._private: dict[str, Any] = {}
        self._public: dict[str, PublicKeyInfo] = {}
        self._next_attempt = 0.0
        self._last_error = "not opened yet"
        self._needs_reinit = False
        self._pin_rejected = False
        self._on_open: Callable[[list[PublicKeyInfo]], None] | None = None

    def __repr__(self) -> str:
        return f"Hsm(module={self._module!r}, token={self._token_label!r}, keys={list(self._refs)})"

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Opens the session now; raises :class:`HsmUnavailable` on failure."""
        with PKCS11_LOCK:
            self._open_locked()

    def close(self) -> None:
        with PKCS11_LOCK:
            self._drop_locked("closed")

    def on_open(self, callback: Callable[[list[PublicKeyInfo]], None]) -> None:
        """Calls ``callback(payment public keys)`` after every later successful open,
        a reopen after a fault included, before anything is signed in the new session.

        It runs with ``PKCS11_LOCK`` held (that is what orders it before the next
        signature), so nothing may wait for the HSM while holding a lock the
        callback takes. If it raises :class:`HsmError` the session is dropped and
        the open fails like any other (retried after ``retry_interval``).
        """
        with PKCS11_LOCK:
            self._on_open = callback

    def _open_locked(self) -> None:
        if self._pin_rejected:
            # Never retry a rejected PIN: a real HSM locks the user after a few tries.
            raise HsmPinRejected(f"HSM unavailable: {self._last_error}")
        self._drop_locked(self._last_error)
        try:
            lib = pkcs11.lib(self._module)
            if self._needs_reinit:
                lib.reinitialize()
                self._needs_reinit = False
            token = lib.get_token(token_label=self._token_label)
            session = token.open(user_pin=self.__pin)
        except pkcs11.exceptions.NoSuchToken:
            self._fail_locked(f"no token labelled {self._token_label!r}")
        except (
            pkcs11.exceptions.PinIncorrect,
            pkcs11.exceptions.PinLocked,
            pkcs11.exceptions.PinExpired,
            pkcs11.exceptions.PinInvalid,
            pkcs11.exceptions.PinLenRange,
        ) as exc:
            self._pin_rejected = True
            words = {
                "PinIncorrect": "PIN incorrect",
                "PinLocked": "PIN locked",
                "PinExpired": "PIN expired",
            }.get(type(exc).__name__, "PIN invalid")
            self._drop_locked(
                f"login to token {self._token_label!r} refused: {words}; "
                "not retrying until restarted with a correct PIN"
            )
            raise HsmPinRejected(f"HSM unavailable: {self._last_error}") from None
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # Login is per token and process: one Hsm (or provisioning call) at a time.
            self._fail_locked(
                f"token {self._token_label!r} is already logged in by another user in this process"
            )
        except (pkcs11.exceptions.PKCS11Error, OSError) as exc:
            self._fail_locked(f"cannot open token {self._token_label!r}: {type(exc).__name__}")
        try:
            private: dict[str, Any] = {}
            public: dict[str, PublicKeyInfo] = {}
            refs = [*self._refs.values(), *([self._audit_ref] if self._audit_ref else [])]
            for ref in refs:
                private[ref.key_id], public[ref.key_id] = self._load_key(session, ref)
            evm_private, evm_public = self._load_evm_keys_locked(session)
        except (KeyNotFound, UnsafeKey) as exc:
            self._session = session
            self._drop_locked(str(exc))
            raise
        except pkcs11.exceptions.PKCS11Error as exc:
            self._session = session
            self._drop_locked(f"cannot read keys: {type(exc).__name__}")
            self._fail_locked(self._last_error)
        except BaseException:
            self._session = session  # never leave a logged-in session behind
            self._drop_locked("unexpected error while reading keys")
            raise
        self._session = session
        self._private = private
        self._public = public
        self._evm_private = evm_private
        self._evm_public = evm_public
        self._last_error = ""
        if self._on_open is not None:
            try:
                self._on_open([public[k] for k in sorted(public) if k in self._refs])
            except HsmError as exc:
                self._fail_locked(str(exc))
            except BaseException:
                self._drop_locked("the on-open callback failed")
                raise

    def _load_key(self, session: Any, ref: KeyRef) -> tuple[Any, PublicKeyInfo]:
        priv, pub = key_pair(session, ref, self._token_label)
        info = PublicKeyInfo(ref, encode_ec_public_key(pub))
        try:
            info.public_key()  # raises unless P-256
        except ValueError as exc:
            raise UnsafeKey(f"key {ref.key_id}: {exc}") from None
        return priv, info

    def _drop_locked(self, reason: str) -> None:
        session, self._session = self._session, None
        self._private = {}
        self._evm_private = {}
        self._last_error = reason
        if session is not None:
            try:
                session.close()
            except pkcs11.exceptions.PKCS11Error:
                pass  # the session is being thrown away because it is broken
            # Re-initialise the library before the next open, so that a token
            # that went away and came back is found again.
            self._needs_reinit = True

    def _fail_locked(self, reason: str) -> NoReturn:
        self._drop_locked(reason)
        self._needs_reinit = True
        self._next_attempt = self._clock() + self._retry_interval
        raise HsmUnavailable(f"HSM unavailable: {reason}")

    def _ensure_open_locked(self) -> None:
        if self._session is not None:
            return
        if self._clock() < self._next_attempt:
            raise HsmUnavailable(f"HSM unavailable: {self._last_error}")
        try:
            self._open_locked()
        except HsmPinRejected:
            raise
        except (KeyNotFound, UnsafeKey) as exc:
            self._next_attempt = self._clock() + self._retry_interval
            raise HsmUnavailable(f"HSM unavailable: {exc}") from None

    # -- use -------------------------------------------------------------

    def ensure_available(self) -> None:
        """Raises :class:`HsmUnavailable` unless a session is open (or reopens now)."""
        with PKCS11_LOCK:
            self._ensure_open_locked()

    def sign_es256(self, key_id: str, signing_input: bytes) -> bytes:
        """ES256 signature (64 bytes, r||s) over SHA-256 of ``signing_input``.

        The digest is computed here, so no caller can have an arbitrary digest
        signed. A payment key version that was not read at open (one rotated in
        while the signer runs) is looked up on the token by label and CKA_ID now,
        checked like the others, and kept. Whether a version may sign is the
        caller's to decide (its state is in the store); this only refuses the audit
        key. Raises :class:`KeyNotFound` for a key that is not on the token and
        :class:`HsmUnavailable` when the token cannot sign now.
        """
        ref = self._payment_ref(key_id)
        digest = hashlib.sha256(signing_input).digest()
        with PKCS11_LOCK:
            self._ensure_open_locked()
            if key_id not in self._private:
                self._find_locked(ref)
            try:
                signature: bytes = self._private[key_id].sign(digest, mechanism=Mechanism.ECDSA)
            except pkcs11.exceptions.PKCS11Error as exc:
                self._fail_locked(f"signing failed: {type(exc).__name__}")
        if len(signature) != 64:
            raise HsmUnavailable(f"HSM returned a {len(signature)}-byte ECDSA signature")
        return signature

    def _payment_ref(self, key_id: str) -> KeyRef:
        ref = self._refs.get(key_id)
        if ref is not None:
            return ref
        if key_id in self._evm_refs:
            raise KeyNotFound(f"key {key_id} is an x402-exact-evm key: it signs no JWS")
        try:
            ref = KeyRef.parse(key_id)
        except ValueError:
            raise KeyNotFound(f"{key_id!r} is not a payment key id") from None
        if ref == self._audit_ref:
            raise KeyNotFound(f"key {key_id} is the audit key, never a payment key")
        return ref

    def _find_locked(self, ref: KeyRef) -> None:
        """Reads one payment key pair from the open session and keeps it (see
        :meth:`sign_es256`). A key that is missing or unsafe is refused without
        dropping the session: the token itself is fine."""
        try:
            private, public = self._load_key(self._session, ref)
        except pkcs11.exceptions.PKCS11Error as exc:
            self._fail_locked(f"cannot read key {ref.key_id}: {type(exc).__name__}")
        self._refs[ref.key_id] = ref
        self._private[ref.key_id] = private
        self._public[ref.key_id] = public

    def forget(self, key_ids: Iterable[str]) -> None:
        """Stops holding these payment keys (``x402-exact-evm`` ones too): their handles
        are dropped and a reopen of the token no longer requires them (a version that
        stopped signing may be destroyed later). Asked for again, a key is looked up
        again on the token, as a version rotated in while the signer runs is."""
        with PKCS11_LOCK:
            for key_id in key_ids:
                if self._audit_ref is not None and key_id == self._audit_ref.key_id:
                    continue
                self._refs.pop(key_id, None)
                self._private.pop(key_id, None)
                self._public.pop(key_id, None)
                self._evm_refs.pop(key_id, None)  # x402 keys alike
                self._evm_private.pop(key_id, None)
                self._evm_public.pop(key_id, None)

    def sign_checkpoint(self, body: bytes) -> bytes:
        """ES256 (r||s) over SHA-256 of an audit checkpoint, with the audit key only.

        The body must be a checkpoint's: a JSON object of exactly its fields, each once,
        ``typ`` ``paywarden.checkpoint.v1`` (:class:`ValueError` otherwise). The audit
        key is never a payment key: :meth:`sign_es256` refuses it.
        """
        audit_body(body, CHECKPOINT_TYPE, CHECKPOINT_FIELDS)
        return self._sign_audit(body, "checkpoint")

    def sign_receipt(self, body: bytes) -> bytes:
        """ES256 (r||s) over SHA-256 of a receipt body, with the audit key only.

        The body must be a receipt's: a JSON object of exactly its fields, each once,
        ``typ`` ``paywarden.receipt.v1`` (:class:`ValueError` otherwise). A receipt's
        typ and fields differ from a checkpoint's, so neither signature passes for the
        other, and nothing else is signed through this door.
        """
        audit_body(body, RECEIPT_TYPE, RECEIPT_FIELDS)
        return self._sign_audit(body, "receipt")

    def sign_mandate_receipt(self, signing_input: bytes) -> bytes:
        """ES256 (r||s) over SHA-256 of a mandate receipt's JWS signing input, with the
        audit key only (:func:`~paywarden.hsm.audit_bodies.mandate_receipt_input` says
        what is accepted; :class:`ValueError` otherwise)."""
        mandate_receipt_input(signing_input)
        return self._sign_audit(signing_input, "mandate receipt")

    def _sign_audit(self, body: bytes, what: str) -> bytes:
        """The audit key's ES256 (r||s) over SHA-256 of ``body``, under the one lock."""
        if self._audit_ref is None:
            raise KeyNotFound("no audit key is configured")
        digest = hashlib.sha256(body).digest()
        with PKCS11_LOCK:
            self._ensure_open_locked()
            try:
                key = self._private[self._audit_ref.key_id]
                signature: bytes = key.sign(digest, mechanism=Mechanism.ECDSA)
            except pkcs11.exceptions.PKCS11Error as exc:
                self._fail_locked(f"{what} signing failed: {type(exc).__name__}")
        if len(signature) != 64:
            raise HsmUnavailable(f"HSM returned a {len(signature)}-byte ECDSA signature")
        return signature

    def audit_public_key(self) -> PublicKeyInfo:
        if self._audit_ref is None:
            raise KeyNotFound("no audit key is configured")
        with PKCS11_LOCK:
            info = self._public.get(self._audit_ref.key_id)
        if info is None:
            raise HsmUnavailable("the audit public key has not been read yet")
        return info

    def check(self) -> None:
        """Raises :class:`HsmUnavailable` unless the token answers now."""
        with PKCS11_LOCK:
            self._ensure_open_locked()
            try:
                for ref in [*self._refs.values(), *self._evm_refs.values()]:
                    self._session.get_key(
                        object_class=ObjectClass.PUBLIC_KEY, label=ref.label, id=ref.cka_id
                    )
            except pkcs11.exceptions.PKCS11Error as exc:
                self._fail_locked(f"health check failed: {type(exc).__name__}")

    @property
    def available(self) -> bool:
        with PKCS11_LOCK:
            return self._session is not None

    @property
    def last_error(self) -> str:
        return self._last_error

    def key_ids(self) -> list[str]:
        with PKCS11_LOCK:
            return sorted(self._refs)

    def public_keys(self) -> list[PublicKeyInfo]:
        """Public keys read at the last successful open (kept while unavailable)."""
        with PKCS11_LOCK:
            return [self._public[k] for k in sorted(self._public) if k in self._refs]
