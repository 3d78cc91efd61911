"""Ethereum's view of a secp256k1 key: keccak-256, addresses and (r, s, v) signatures.

Pure: no PKCS#11. The token signs (:mod:`paywarden.hsm.evm_keys`); this module turns
its public key into an address and its r||s into what Ethereum accepts: ``s`` in the
lower half of the group order (EIP-2; a high ``s`` is refused by ``ecrecover`` users
such as EIP-3009 tokens built on OpenZeppelin's ECDSA) and the recovery id ``v``,
the one with which (r, s, digest) recovers the key's own public key.

The curve arithmetic is plain Python on purpose: it only ever sees public values
(a public key, a digest about to be published, a signature), so there is no secret
whose timing it could leak, and it needs no library beyond keccak-256. Python's
``hashlib.sha3_256`` is NOT keccak-256 (SHA-3 changed the padding) and OpenSSL 3.0
has no keccak, hence pycryptodome's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from Crypto.Hash import keccak as _keccak
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm.keys import KeyRef

# secp256k1 (SEC 2, section 2.4.1)
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = N // 2
_GX = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
_GY = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

# A point in Jacobian coordinates (X, Y, Z): affine (X/Z², Y/Z³); Z == 0 is infinity.
_Jacobian = tuple[int, int, int]
_INFINITY: _Jacobian = (0, 1, 0)


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (original Keccak padding, not FIPS 202 SHA3-256)."""
    return bytes(_keccak.new(digest_bits=256, data=data).digest())


# -- addresses ------------------------------------------------------------


def checksum_address(raw: bytes) -> str:
    """The EIP-55 mixed-case form of a 20-byte address."""
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, not {len(raw)}")
    lower = raw.hex()
    # Nibble i of keccak-256(lowercase hex) decides the case of hex digit i.
    mask = keccak256(lower.encode("ascii")).hex()[:40]
    pairs = zip(lower, mask, strict=True)
    return "0x" + "".join(c.upper() if c.isalpha() and int(m, 16) >= 8 else c for c, m in pairs)


def parse_address(text: str) -> bytes:
    """The 20 bytes of ``0x`` + 40 hex digits.

    All lower case or all upper case carries no checksum and is taken as it is; a
    mixed-case address must be exactly its EIP-55 form, so that a look-alike with one
    altered character (which a person comparing mixed-case text may miss) is refused
    rather than paid.
    """
    if not isinstance(text, str) or not _ADDRESS.fullmatch(text):
        raise ValueError("an address is 0x followed by 40 hexadecimal digits")
    digits = text[2:]
    raw = bytes.fromhex(digits)
    if digits != digits.lower() and digits != digits.upper() and checksum_address(raw) != text:
        raise ValueError(f"address {text} has a wrong EIP-55 checksum")
    return raw


def address_of_point(point: bytes) -> str:
    """The EIP-55 address of an uncompressed secp256k1 point (0x04 || x || y): the last
    20 bytes of keccak-256(x || y). Refuses bytes that are not a point of the curve."""
    _decode_point(point)
    return checksum_address(keccak256(point[1:])[-20:])


def _decode_point(point: bytes) -> tuple[int, int]:
    if len(point) != 65 or point[0] != 4:
        raise ValueError("a public key is 65 bytes: 0x04 || x || y")
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    if not (x < P and y < P and (y * y - x * x * x - 7) % P == 0):
        raise ValueError("the public key is not a point of secp256k1")
    return x, y


# -- curve arithmetic (public values only) ----------------------------------


def _double(p: _Jacobian) -> _Jacobian:
    x, y, z = p
    if z == 0 or y == 0:
        return _INFINITY
    yy = y * y % P
    s = 4 * x * yy % P
    m = 3 * x * x % P
    nx = (m * m - 2 * s) % P
    return nx, (m * (s - nx) - 8 * yy * yy) % P, 2 * y * z % P


def _add(p: _Jacobian, q: _Jacobian) -> _Jacobian:
    if p[2] == 0:
        return q
    if q[2] == 0:
        return p
    x1, y1, z1 = p
    x2, y2, z2 = q
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    if u1 == u2:
        return _double(p) if s1 == s2 else _INFINITY
    h, r = (u2 - u1) % P, (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    nx = (r * r - hhh - 2 * v) % P
    return nx, (r * (v - nx) - s1 * hhh) % P, h * z1 * z2 % P


def _affine(p: _Jacobian) -> tuple[int, int] | None:
    x, y, z = p
    if z == 0:
        return None
    zi = pow(z, -1, P)
    zi2 = zi * zi % P
    return x * zi2 % P, y * zi2 * zi % P


def _twin_multiply(a: int, p: _Jacobian, b: int, q: _Jacobian) -> _Jacobian:
    """a·P + b·Q in one pass (Shamir's trick)."""
    both = _add(p, q)
    acc = _INFINITY
    for bit in range(max(a.bit_length(), b.bit_length()) - 1, -1, -1):
        acc = _double(acc)
        pick = ((a >> bit) & 1, (b >> bit) & 1)
        if pick == (1, 1):
            acc = _add(acc, both)
        elif pick == (1, 0):
            acc = _add(acc, p)
        elif pick == (0, 1):
            acc = _add(acc, q)
    return acc


# -- signatures ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvmSignature:
    """An Ethereum ECDSA signature: low ``s`` and recovery id ``v`` (0 or 1)."""

    r: int
    s: int
    v: int

    def __post_init__(self) -> None:
        if not (0 < self.r < N and 0 < self.s <= HALF_N and self.v in (0, 1)):
            raise ValueError("r in [1, n-1], s in [1, n/2] and v in {0, 1}")

    def to_bytes(self) -> bytes:
        """The 65 bytes r || s || v with v as 27 or 28, as ``ecrecover`` and EIP-3009
        tokens take it (and x402's ``signature`` field carries it, in hex)."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([27 + self.v])

    def hex(self) -> str:
        return "0x" + self.to_bytes().hex()


def normalise(digest: bytes, raw: bytes, public_point: bytes) -> EvmSignature:
    """The Ethereum form of a token's 64-byte r||s over ``digest`` by ``public_point``.

    ``s`` above n/2 becomes n - s (the same signature for ECDSA, the only one Ethereum
    accepts). Then R = s⁻¹·(e·G + r·Q) with the key's own public key Q: this is ECDSA
    verification, so unless R's x coordinate is r the token did not sign ``digest``
    with this key and nothing is returned. The recovery id ``v`` is the parity of R's
    y coordinate, the one from which recovery gives back Q (``ecrecover`` rebuilds R
    from r and v, and r⁻¹·(s·R - e·G) = Q). One double multiplication, where trying
    both values of ``v`` by recovery would take up to two. R's x coordinate at or above
    n (probability about 2^-128) has no Ethereum encoding and is refused as well.
    """
    if len(digest) != 32:
        raise ValueError("the digest is 32 bytes")
    if len(raw) != 64:
        raise ValueError(f"an ECDSA signature from the token is 64 bytes, not {len(raw)}")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < N and 0 < s < N):
        raise ValueError("the token's signature is out of range")
    if s > HALF_N:
        s = N - s
    qx, qy = _decode_point(public_point)
    e = int.from_bytes(digest, "big") % N
    s_inv = pow(s, -1, N)
    point = _affine(_twin_multiply(e * s_inv % N, (_GX, _GY, 1), r * s_inv % N, (qx, qy, 1)))
    if point is None or point[0] != r:
        raise ValueError("the signature does not verify under the key's public key")
    return EvmSignature(r, s, point[1] & 1)


@dataclass(frozen=True, slots=True)
class EvmPublicKey:
    """An ``x402-exact-evm`` key's public half as read from the token."""

    ref: KeyRef
    point: bytes  # uncompressed, 0x04 || x || y

    def __post_init__(self) -> None:
        _decode_point(self.point)

    @property
    def key_id(self) -> str:
        return self.ref.key_id

    @property
    def address(self) -> str:
        """The key's Ethereum address, EIP-55 checksummed."""
        return address_of_point(self.point)

    @property
    def spki_der(self) -> bytes:
        """The public key as a DER SubjectPublicKeyInfo (what the signer's store keeps)."""
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), self.point)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
