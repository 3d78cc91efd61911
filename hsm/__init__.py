"""Everything PKCS#11: the only package that imports python-pkcs11.

The public surface is small on purpose: :class:`Hsm` signs ES256 over bytes
it hashes itself, and EIP-3009 authorisations (``x402-exact-evm`` keys) over
the EIP-712 digest it computes itself from their typed values (there is no way
to hand it a digest); it exports public keys and reports its health.
Provisioning (token initialisation, key generation) lives in
:mod:`paywarden.hsm.provision` and is used only by the security team's
``paywarden-keys`` command (:mod:`paywarden.signer.cli.keys`, also ``scripts/keys.py``).
"""

from paywarden.hsm.eip712 import Eip712Domain, TransferWithAuthorization
from paywarden.hsm.errors import HsmError, HsmPinRejected, HsmUnavailable, KeyNotFound, UnsafeKey
from paywarden.hsm.evm import EvmPublicKey, EvmSignature
from paywarden.hsm.keys import KeyRef, PublicKeyInfo
from paywarden.hsm.token import Hsm, read_pin

__all__ = [
    "Eip712Domain",
    "EvmPublicKey",
    "EvmSignature",
    "Hsm",
    "HsmError",
    "HsmPinRejected",
    "HsmUnavailable",
    "KeyNotFound",
    "KeyRef",
    "PublicKeyInfo",
    "TransferWithAuthorization",
    "UnsafeKey",
    "read_pin",
]
