"""The one lock for every PKCS#11 call of the process, and what a private key must be.

python-pkcs11 calls ``C_Initialize(NULL)``: the library is told that it will not be
called from several threads at once, and SoftHSM2 crashes when it is. So every
PKCS#11 call in this process, whichever module of this package makes it, goes
through ``PKCS11_LOCK``. Every private key the signer opens, whatever its profile,
is checked against one attribute table.
"""

from __future__ import annotations

import threading
from typing import Any

import pkcs11
from paywarden.hsm.errors import KeyNotFound, UnsafeKey
from paywarden.hsm.keys import KeyRef
from pkcs11 import Attribute, KeyType, ObjectClass

PKCS11_LOCK = threading.RLock()
"""Serialises every PKCS#11 call made by this process (see module docstring)."""

_MUST_BE = {
    Attribute.SENSITIVE: True,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.SIGN_RECOVER: False,
    # Only after login, and fixed at generation: with CKA_MODIFIABLE true, anyone
    # holding the user PIN could turn on DERIVE or DECRYPT later.
    Attribute.PRIVATE: True,
    Attribute.MODIFIABLE: False,
}


def check_private_key(ref: KeyRef, key: Any) -> None:
    """Refuses a key that could ever leave the token or do more than sign."""
    wrong = []
    for attribute, wanted in _MUST_BE.items():
        try:
            value = bool(key[attribute])
        except pkcs11.exceptions.PKCS11Error:
            value = not wanted  # unreadable counts as wrong
        if value != wanted:
            wrong.append(f"{attribute.name}={value}")
    if wrong:
        raise UnsafeKey(f"key {ref.key_id} is not safe to use: {', '.join(wrong)}")


def key_pair(session: Any, ref: KeyRef, token_label: str) -> tuple[Any, Any]:
    """The private and public key objects of ``ref`` (EC, by label and CKA_ID), the
    private one checked against the attribute table. Raises :class:`KeyNotFound` when
    either is missing and :class:`UnsafeKey` when one is there twice or is unsafe. Call
    with :data:`PKCS11_LOCK` held."""
    try:
        private = session.get_key(
            object_class=ObjectClass.PRIVATE_KEY,
            key_type=KeyType.EC,
            label=ref.label,
            id=ref.cka_id,
        )
        public = session.get_key(
            object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=ref.label, id=ref.cka_id
        )
    except pkcs11.exceptions.NoSuchKey:
        raise KeyNotFound(f"key {ref.key_id} is not on token {token_label!r}") from None
    except pkcs11.exceptions.MultipleObjectsReturned:
        raise UnsafeKey(f"key {ref.key_id} is on the token more than once") from None
    check_private_key(ref, private)
    return private, public
