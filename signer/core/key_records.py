"""The ``keys.load`` audit record: which keys the token held when it was opened.

Written at start-up and before the first signature of every later session with the
token, so that no payment or x402 authorisation is signed with a key whose
fingerprint the log does not hold. x402 keys carry their address too.
"""

from __future__ import annotations

import hashlib

from paywarden.hsm import PublicKeyInfo
from paywarden.hsm.evm import EvmPublicKey
from paywarden.signer.core import audit_events


def keys_load(
    now: int,
    keys: list[PublicKeyInfo],
    evm_keys: list[EvmPublicKey],
    audit_key: str,
    *,
    available: bool,
    reopened: bool = False,
) -> audit_events.Event:
    fingerprints = [
        {"key_id": k.key_id, "spki_sha256": hashlib.sha256(k.spki_der).hexdigest()} for k in keys
    ]
    fingerprints += [
        {
            "key_id": k.key_id,
            "spki_sha256": hashlib.sha256(k.spki_der).hexdigest(),
            "address": k.address,
        }
        for k in evm_keys
    ]
    extra = {"reopened": True} if reopened else {}
    return audit_events.event(
        "keys.load",
        None,
        now,
        keys=fingerprints,
        audit_key=audit_key,
        hsm_available=available,
        **extra,
    )
