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
from paywarden.hsm.errors import UnsafeKey
from paywarden.hsm.keys import KeyRef
from pkcs11 import Attribute

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
