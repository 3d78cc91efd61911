"""The EIP-712 digest of an EIP-3009 ``TransferWithAuthorization``: what an x402
``exact`` payment on an EVM chain signs.

Pure: no PKCS#11. It lives in the HSM layer because the token signs this digest and
nothing else of the profile: :meth:`paywarden.hsm.Hsm.sign_transfer_authorization`
takes the typed values and computes the digest here, so no caller can have an
arbitrary 32-byte digest signed (as :meth:`~paywarden.hsm.Hsm.sign_es256` hashes its
input itself).

Every input is validated strictly on construction: addresses are 20 bytes (a
mixed-case address must carry its correct EIP-55 checksum) and are kept in their
checksummed form, integers are uint256 (``bool`` is not an integer here), the nonce
is 32 bytes, the window is not empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from paywarden.hsm.evm import checksum_address, keccak256, parse_address

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
TRANSFER_TYPE = (
    "TransferWithAuthorization(address from,address to,uint256 value,"
    "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
_DOMAIN_TYPEHASH = keccak256(DOMAIN_TYPE.encode("ascii"))
_TRANSFER_TYPEHASH = keccak256(TRANSFER_TYPE.encode("ascii"))
_UINT256_LIMIT = 1 << 256
_MAX_TEXT = 64  # a token's EIP-712 name or version (USDC: "USD Coin", "2")
_ZERO_ADDRESS = bytes(20)


def _address(what: str, text: str) -> str:
    """``text`` checked (see :func:`paywarden.hsm.evm.parse_address`) and checksummed;
    the zero address is refused (a transfer to it burns, a contract there is none)."""
    try:
        raw = parse_address(text)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if raw == _ZERO_ADDRESS:
        raise ValueError(f"{what} is the zero address")
    return checksum_address(raw)


def _uint256(what: str, value: int) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} is an integer")
    if not 0 <= value < _UINT256_LIMIT:
        raise ValueError(f"{what} is out of the uint256 range")
    return value


def _text(what: str, value: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or not value.isprintable():
        raise ValueError(f"{what} is 1 to {_MAX_TEXT} printable characters")
    return value


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + parse_address(address)


@dataclass(frozen=True, slots=True)
class Eip712Domain:
    """The token contract's EIP-712 domain (its ``DOMAIN_SEPARATOR``)."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        _text("the domain name", self.name)
        _text("the domain version", self.version)
        if _uint256("the chain id", self.chain_id) == 0:
            raise ValueError("the chain id is positive")
        checked = _address("the verifying contract", self.verifying_contract)
        object.__setattr__(self, "verifying_contract", checked)

    def separator(self) -> bytes:
        """hashStruct(EIP712Domain): what the contract's DOMAIN_SEPARATOR() returns."""
        return keccak256(
            _DOMAIN_TYPEHASH
            + keccak256(self.name.encode("utf-8"))
            + keccak256(self.version.encode("utf-8"))
            + _word(self.chain_id)
            + _address_word(self.verifying_contract)
        )


@dataclass(frozen=True, slots=True)
class TransferWithAuthorization:
    """An EIP-3009 authorisation: ``value`` of the token from ``from_address`` to
    ``to``, valid strictly after ``valid_after`` and strictly before ``valid_before``
    (Unix seconds), usable once (``nonce``, 32 random bytes, per ``from_address``)."""

    from_address: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_address", _address("from", self.from_address))
        object.__setattr__(self, "to", _address("to", self.to))
        _uint256("the value", self.value)
        _uint256("validAfter", self.valid_after)
        _uint256("validBefore", self.valid_before)
        if self.valid_before <= self.valid_after + 1:
            raise ValueError("validBefore leaves no second after validAfter")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 32:
            raise ValueError("the nonce is 32 bytes")

    def struct_hash(self) -> bytes:
        return keccak256(
            _TRANSFER_TYPEHASH
            + _address_word(self.from_address)
            + _address_word(self.to)
            + _word(self.value)
            + _word(self.valid_after)
            + _word(self.valid_before)
            + self.nonce
        )


def transfer_digest(domain: Eip712Domain, authorization: TransferWithAuthorization) -> bytes:
    """keccak256(0x19 0x01 || domainSeparator || hashStruct(authorization)): the 32
    bytes an EIP-3009 token recovers the signer from."""
    return keccak256(b"\x19\x01" + domain.separator() + authorization.struct_hash())
