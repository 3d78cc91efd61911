"""The x402 profile's pure parts (paywarden.hsm.evm, paywarden.hsm.eip712) against
independent implementations: eth-account / eth-keys / eth-utils (the Ethereum
Foundation's Python libraries) and the x402 SDK's own EIP-3009 hashing, plus the
EIP-55 test vectors of the EIP itself.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from paywarden.hsm import evm
from paywarden.hsm.eip712 import Eip712Domain, TransferWithAuthorization, transfer_digest
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Authorization

from tests.support.evm import (
    USDC_BASE,
    eip3009_typed_data,
    random_authorization,
    random_domain,
)

# EIP-55's own test vectors: all caps, all lower, then mixed case.
EIP55_VECTORS = (
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
)


def _eth_account_digest(domain: Eip712Domain, auth: TransferWithAuthorization) -> bytes:
    message = encode_typed_data(full_message=eip3009_typed_data(domain, auth))
    return keccak(b"\x19" + message.version + message.header + message.body)


def _x402_digest(domain: Eip712Domain, auth: TransferWithAuthorization) -> bytes:
    return hash_eip3009_authorization(
        ExactEIP3009Authorization(
            from_address=auth.from_address,
            to=auth.to,
            value=str(auth.value),
            valid_after=str(auth.valid_after),
            valid_before=str(auth.valid_before),
            nonce="0x" + auth.nonce.hex(),
        ),
        domain.chain_id,
        domain.verifying_contract,
        domain.name,
        domain.version,
    )


def _swap_case_once(address: str) -> str:
    """``address`` with the case of its first letter flipped: the same 20 bytes, but a
    mixed-case text whose EIP-55 checksum is wrong."""
    for i, c in enumerate(address[2:], start=2):
        if c.isalpha():
            return address[:i] + c.swapcase() + address[i + 1 :]
    raise AssertionError(f"{address} has no letter")


# -- keccak-256 and addresses -------------------------------------------------------


def test_the_reference_recovers_without_the_signers_library() -> None:
    """eth-keys (and so eth-account) recovers in pure Python here, not with coincurve
    (libsecp256k1), which the signer uses: the reference is independent of it."""
    key = PrivateKey(bytes(31) + b"\x01")
    assert type(key.backend).__name__ == "NativeECCBackend"
    assert type(Account._keys.backend).__name__ == "NativeECCBackend"


def test_keccak256_is_ethereum_keccak_not_sha3() -> None:
    assert evm.keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    rng = random.Random(1)
    for size in (1, 31, 32, 135, 136, 137, 1000):
        data = rng.randbytes(size)
        assert evm.keccak256(data) == keccak(data)


@pytest.mark.parametrize("vector", EIP55_VECTORS)
def test_eip55_vectors_parse_and_checksum(vector: str) -> None:
    raw = evm.parse_address(vector)
    assert raw == bytes.fromhex(vector[2:])
    assert evm.checksum_address(raw) == to_checksum_address(vector)
    if vector[2:] not in (vector[2:].lower(), vector[2:].upper()):
        assert evm.checksum_address(raw) == vector  # a mixed-case vector is its own EIP-55


def test_checksum_agrees_with_eth_utils_on_random_addresses() -> None:
    rng = random.Random(2)
    for _ in range(200):
        raw = rng.randbytes(20)
        text = evm.checksum_address(raw)
        assert text == to_checksum_address(raw)
        assert evm.parse_address(text) == raw
        assert evm.parse_address(text.lower()) == raw
        assert evm.parse_address("0x" + text[2:].upper()) == raw


@pytest.mark.parametrize("vector", EIP55_VECTORS[4:])
def test_mixed_case_address_with_a_wrong_checksum_is_refused(vector: str) -> None:
    confusable = _swap_case_once(vector)
    assert confusable.lower() == vector.lower()
    with pytest.raises(ValueError, match="EIP-55 checksum"):
        evm.parse_address(confusable)
    with pytest.raises(ValueError, match="EIP-55 checksum"):
        TransferWithAuthorization(vector, confusable, 1, 0, 10, bytes(32))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",  # no 0x
        "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",  # 39 digits
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed00",  # 42 digits
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",
        " 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n",
        "0x\uff15aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",  # a fullwidth digit 5
    ],
)
def test_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        evm.parse_address(text)


def test_address_of_a_public_key_matches_eth_account() -> None:
    rng = random.Random(3)
    for _ in range(50):
        secret = rng.randbytes(32)
        account = Account.from_key(secret)
        point = b"\x04" + PrivateKey(secret).public_key.to_bytes()
        assert evm.address_of_point(point) == account.address


def test_a_point_off_the_curve_has_no_address() -> None:
    point = b"\x04" + PrivateKey(bytes(31) + b"\x07").public_key.to_bytes()
    off = point[:-1] + bytes([point[-1] ^ 1])
    with pytest.raises(ValueError, match="not a point"):
        evm.address_of_point(off)
    with pytest.raises(ValueError):
        evm.address_of_point(point[1:])  # no 0x04 prefix


# -- low s and the recovery id --------------------------------------------------------


def test_normalise_gives_eth_keys_low_s_and_v_from_either_s() -> None:
    rng = random.Random(4)
    for _ in range(40):
        key = PrivateKey(rng.randbytes(32))
        point = b"\x04" + key.public_key.to_bytes()
        digest = rng.randbytes(32)
        reference = key.sign_msg_hash(digest)  # eth-keys signs low-s with v
        r = reference.r.to_bytes(32, "big")
        for s in (reference.s, evm.N - reference.s):
            sig = evm.normalise(digest, r + s.to_bytes(32, "big"), point)
            assert (sig.r, sig.s, sig.v) == (reference.r, reference.s, reference.v)
            assert sig.s <= evm.HALF_N
            assert sig.to_bytes() == reference.to_bytes()[:64] + bytes([27 + reference.v])


def test_normalise_refuses_a_signature_of_another_key_or_digest() -> None:
    rng = random.Random(5)
    key, other = (PrivateKey(rng.randbytes(32)) for _ in range(2))
    digest = rng.randbytes(32)
    reference = key.sign_msg_hash(digest)
    raw = reference.to_bytes()[:64]
    with pytest.raises(ValueError, match="does not verify"):
        evm.normalise(digest, raw, b"\x04" + other.public_key.to_bytes())
    with pytest.raises(ValueError, match="does not verify"):
        evm.normalise(rng.randbytes(32), raw, b"\x04" + key.public_key.to_bytes())
    with pytest.raises(ValueError):
        evm.normalise(digest, raw[:63], b"\x04" + key.public_key.to_bytes())
    # r = 5 is no x coordinate of the curve: no recovery id recovers anything
    assert pow(5**3 + 7, (evm.P - 1) // 2, evm.P) == evm.P - 1  # no square mod p (Euler)
    five = (5).to_bytes(32, "big") + raw[32:]
    with pytest.raises(ValueError, match="does not verify"):
        evm.normalise(digest, five, b"\x04" + key.public_key.to_bytes())


def test_a_signature_out_of_range_is_not_an_evm_signature() -> None:
    for r, s, v in ((0, 1, 0), (evm.N, 1, 0), (1, 0, 0), (1, evm.HALF_N + 1, 0), (1, 1, 2)):
        with pytest.raises(ValueError):
            evm.EvmSignature(r, s, v)


# -- the EIP-712 digest -----------------------------------------------------------------


def test_digest_matches_eth_account_and_x402_on_random_authorisations() -> None:
    rng = random.Random(6)
    for _ in range(25):
        domain, auth = random_domain(rng), random_authorization(rng)
        ours = transfer_digest(domain, auth)
        assert ours == _eth_account_digest(domain, auth)
        assert ours == _x402_digest(domain, auth)


@pytest.mark.parametrize(
    "changes",
    [
        {"value": 0},
        {"value": (1 << 256) - 1},
        {"valid_after": 0, "valid_before": (1 << 256) - 1},
        {"nonce": b"\xff" * 32},
        {"nonce": bytes(32)},
    ],
)
def test_digest_matches_eth_account_at_the_edges(changes: dict[str, Any]) -> None:
    auth = dataclasses.replace(random_authorization(random.Random(7)), **changes)
    for domain in (
        USDC_BASE,
        Eip712Domain("USD₮0", "1", 1, "0xdAC17F958D2ee523a2206206994597C13D831ec7"),
        Eip712Domain("x" * 64, "999", (1 << 256) - 1, USDC_BASE.verifying_contract.lower()),
    ):
        assert transfer_digest(domain, auth) == _eth_account_digest(domain, auth)


def test_every_field_changes_the_digest() -> None:
    rng = random.Random(8)
    domain, auth = random_domain(rng), random_authorization(rng)
    base = transfer_digest(domain, auth)
    other = evm.checksum_address(rng.randbytes(20))
    for change in (
        {"from_address": other},
        {"to": other},
        {"value": auth.value + 1},
        {"valid_after": auth.valid_after + 1},
        {"valid_before": auth.valid_before + 1},
        {"nonce": bytes([auth.nonce[0] ^ 1]) + auth.nonce[1:]},
    ):
        assert transfer_digest(domain, dataclasses.replace(auth, **change)) != base, change
    for domain_change in (
        {"name": domain.name + "."},
        {"version": domain.version + "1"},
        {"chain_id": domain.chain_id + 1},
        {"verifying_contract": other},
    ):
        assert transfer_digest(dataclasses.replace(domain, **domain_change), auth) != base


def test_addresses_are_kept_checksummed() -> None:
    auth = random_authorization(random.Random(9))
    lower = dataclasses.replace(auth, to=auth.to.lower(), from_address=auth.from_address.lower())
    assert (lower.to, lower.from_address) == (auth.to, auth.from_address)
    domain = dataclasses.replace(USDC_BASE, verifying_contract=USDC_BASE.verifying_contract.lower())
    assert domain.verifying_contract == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"value": -1}, "uint256"),
        ({"value": 1 << 256}, "uint256"),
        ({"value": True}, "integer"),
        ({"value": 1.0}, "integer"),
        ({"value": "1"}, "integer"),
        ({"valid_after": -1}, "uint256"),
        ({"valid_before": 1 << 256}, "uint256"),
        ({"valid_after": 100, "valid_before": 101}, "no second"),
        ({"valid_after": 100, "valid_before": 50}, "no second"),
        ({"nonce": bytes(31)}, "32 bytes"),
        ({"nonce": bytes(33)}, "32 bytes"),
        ({"nonce": "0x" + "00" * 32}, "32 bytes"),
        ({"to": "0x" + "00" * 20}, "zero address"),
        ({"from_address": "0x" + "00" * 20}, "zero address"),
        ({"to": "0x1234"}, "40 hexadecimal"),
    ],
)
def test_invalid_authorisations_are_refused(changes: dict[str, Any], words: str) -> None:
    auth = random_authorization(random.Random(10))
    fields = {f.name: getattr(auth, f.name) for f in dataclasses.fields(auth)}
    with pytest.raises(ValueError, match=words):
        TransferWithAuthorization(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": ""}, "printable"),
        ({"name": "x" * 65}, "printable"),
        ({"name": "USD\nCoin"}, "printable"),
        ({"version": ""}, "printable"),
        ({"chain_id": 0}, "positive"),
        ({"chain_id": -1}, "uint256"),
        ({"chain_id": True}, "integer"),
        ({"verifying_contract": "0x" + "00" * 20}, "zero address"),
        ({"verifying_contract": _swap_case_once(USDC_BASE.verifying_contract)}, "checksum"),
    ],
)
def test_invalid_domains_are_refused(changes: dict[str, Any], words: str) -> None:
    fields = {f.name: getattr(USDC_BASE, f.name) for f in dataclasses.fields(USDC_BASE)}
    with pytest.raises(ValueError, match=words):
        Eip712Domain(**{**fields, **changes})
