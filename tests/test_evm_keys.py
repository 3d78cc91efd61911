"""``x402-exact-evm`` keys on the real SoftHSM2 token: made by the security team's
``scripts/keys.py generate --profile x402-exact-evm``, read back with python-pkcs11
directly (not our hsm package), and their signatures recovered with eth-account and
checked with the x402 SDK's own EOA verification, never only with our code.

Every test that logs in here opens and closes its own session (the ``evm_hsm``
fixture is per test): login is per token and process, and closing any session logs
all of them out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PublicKey
from paywarden.hsm import Hsm, KeyNotFound, KeyRef, UnsafeKey
from paywarden.hsm import evm as evm_math
from paywarden.hsm.eip712 import TransferWithAuthorization, transfer_digest
from paywarden.hsm.provision import delete_key, generate_key, list_keys
from paywarden.policy.vocabulary import KeyProfile
from x402.mechanisms.evm.constants import (
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme
from x402.mechanisms.evm.verify import verify_eoa_signature
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.helpers import MODULE, ROOT, TestToken
from tests.support.evm import USDC_BASE, eip3009_typed_data, random_authorization
from tests.support.x402_chain import LocalEip3009Chain

EVM_KEY = KeyRef("x402-test", 1)
PAYMENT_KEY = KeyRef("payments", 1)
SIGNATURES = 200
SUBPROCESS_TIMEOUT = 120

# Reads the key's attributes with python-pkcs11 itself, in a process of its own (so its
# login never meets the test process's), and tries what must fail.
_READ_ATTRIBUTES = textwrap.dedent(
    """
    import json, sys
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    module, label, pin_file, key_label, key_id = sys.argv[1:6]
    pin = open(pin_file).read().strip()
    lib = pkcs11.lib(module)
    out = {}
    with lib.get_token(token_label=label).open(rw=True, user_pin=pin) as s:
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                Attribute.LABEL: key_label, Attribute.ID: key_id.encode()})
        for name in ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE",
                     "SIGN", "SIGN_RECOVER", "DECRYPT", "UNWRAP", "DERIVE", "PRIVATE",
                     "MODIFIABLE", "TOKEN"):
            out[name] = bool(key[getattr(Attribute, name)])
        out["secp256k1"] = bytes(key[Attribute.EC_PARAMS]) == bytes(
            encode_named_curve_parameters("secp256k1"))
        try:
            out["VALUE"] = "READ " + bytes(key[Attribute.VALUE]).hex()[:4]
        except pkcs11.exceptions.PKCS11Error as exc:
            out["VALUE"] = type(exc).__name__
        for name in ("DERIVE", "DECRYPT", "EXTRACTABLE"):
            try:
                key[getattr(Attribute, name)] = True
                out["set " + name] = "CHANGED"
            except pkcs11.exceptions.PKCS11Error as exc:
                out["set " + name] = type(exc).__name__
    print(json.dumps(out))
    """
)


def _keys_script(token: TestToken, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/keys.py", "--label", token.label, *args],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def evm_address(token: TestToken) -> Iterator[str]:
    """Generates the x402 key on the session token with the security team's script and
    yields the address it printed; destroys the key afterwards, so that the token is
    again the one every other module expects (tests/conftest.py KEYS)."""
    proc = _keys_script(
        token,
        *("generate", "--pin-file", str(token.pin_file), "--key", EVM_KEY.key_id),
        *("--profile", "x402-exact-evm"),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"profile={KeyProfile.X402_EXACT_EVM}" in proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if " address " in x]
    address = line.rsplit(" ", 1)[1]
    assert address == evm_math.checksum_address(evm_math.parse_address(address))
    try:
        yield address
    finally:
        assert delete_key(MODULE, token.label, token.pin, EVM_KEY) == 2


@pytest.fixture
def evm_hsm(token: TestToken, evm_address: str) -> Iterator[Hsm]:
    h = Hsm(MODULE, token.label, token.pin, [PAYMENT_KEY], evm_keys=[EVM_KEY], retry_interval=0)
    h.open()
    try:
        yield h
    finally:
        h.close()


def _recover_typed(auth: TransferWithAuthorization, signature: bytes) -> str:
    message = encode_typed_data(full_message=eip3009_typed_data(USDC_BASE, auth))
    return str(Account.recover_message(message, signature=signature))


# -- the key on the token ------------------------------------------------------------


def test_the_secp256k1_private_key_is_sensitive_never_extractable_sign_only(
    token: TestToken, evm_address: str
) -> None:
    argv = [MODULE, token.label, str(token.pin_file), EVM_KEY.label, f"v{EVM_KEY.version}"]
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ATTRIBUTES, *argv],
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    read = json.loads(proc.stdout)
    assert read["secp256k1"] is True
    assert read["SENSITIVE"] is True
    assert read["EXTRACTABLE"] is False
    assert read["ALWAYS_SENSITIVE"] is True
    assert read["NEVER_EXTRACTABLE"] is True
    assert read["SIGN"] is True
    for use in ("SIGN_RECOVER", "DECRYPT", "UNWRAP", "DERIVE", "MODIFIABLE"):
        assert read[use] is False, use
    assert read["PRIVATE"] is True and read["TOKEN"] is True
    assert read["VALUE"] == "AttributeSensitive"  # the private scalar cannot be read
    for use in ("DERIVE", "DECRYPT", "EXTRACTABLE"):  # nor can it be given another use
        assert read["set " + use] != "CHANGED", use


def test_list_shows_each_keys_profile(token: TestToken, evm_address: str) -> None:
    statuses = {s.ref.key_id: s for s in list_keys(MODULE, token.label, token.pin)}
    assert statuses[EVM_KEY.key_id].profile is KeyProfile.X402_EXACT_EVM
    assert statuses[EVM_KEY.key_id].safe is True
    assert statuses[PAYMENT_KEY.key_id].profile is KeyProfile.JWS_ES256


def test_generating_again_keeps_the_key_and_another_profile_is_refused(
    token: TestToken, evm_address: str
) -> None:
    again = _keys_script(
        token,
        *("generate", "--pin-file", str(token.pin_file), "--key", EVM_KEY.key_id),
        *("--profile", "x402-exact-evm"),
    )
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout and f"address {evm_address}" in again.stdout
    with pytest.raises(UnsafeKey, match="already as a x402-exact-evm key"):
        generate_key(MODULE, token.label, token.pin, EVM_KEY, KeyProfile.JWS_ES256)
    with pytest.raises(UnsafeKey, match="already as a jws-es256 key"):
        generate_key(MODULE, token.label, token.pin, PAYMENT_KEY, KeyProfile.X402_EXACT_EVM)
    pin = ("--pin-file", str(token.pin_file))
    exported = _keys_script(token, "export", *pin, "--key", EVM_KEY.key_id, "--format", "address")
    assert exported.returncode == 0 and exported.stdout == evm_address + "\n"
    as_pem = _keys_script(token, "export", *pin, "--key", EVM_KEY.key_id)
    assert as_pem.returncode == 1 and "export its address" in as_pem.stderr


# -- its address and signatures, checked by eth-account and x402 ----------------------


def test_the_address_is_the_one_eth_account_recovers(evm_hsm: Hsm, evm_address: str) -> None:
    (public,) = evm_hsm.evm_public_keys()
    assert public.key_id == EVM_KEY.key_id
    assert public.address == evm_address
    # eth-keys derives the same address from the same public key...
    assert PublicKey(public.point[1:]).to_checksum_address() == evm_address
    # ...and eth-account recovers it from a signature the token made.
    auth = random_authorization(random.Random(11), from_address=evm_address)
    sig = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth)
    assert _recover_typed(auth, sig.to_bytes()) == evm_address
    digest = transfer_digest(USDC_BASE, auth)
    assert Account._recover_hash(digest, signature=sig.to_bytes()) == evm_address
    assert verify_eoa_signature(digest, sig.to_bytes(), evm_address) is True


def test_low_s_and_the_recovery_id_hold_over_many_signatures(
    evm_hsm: Hsm, evm_address: str
) -> None:
    rng = random.Random(12)
    seen_v = set()
    for _ in range(SIGNATURES):
        auth = random_authorization(rng, from_address=evm_address)
        sig = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth)
        assert 0 < sig.s <= evm_math.HALF_N
        assert sig.to_bytes()[64] in (27, 28)
        seen_v.add(sig.v)
        assert _recover_typed(auth, sig.to_bytes()) == evm_address
    assert seen_v == {0, 1}  # both parities occur: v is found, not assumed


def test_a_tampered_authorisation_or_signature_recovers_another_address(
    evm_hsm: Hsm, evm_address: str
) -> None:
    rng = random.Random(13)
    auth = random_authorization(rng, from_address=evm_address)
    signature = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth).to_bytes()
    for change in (
        {"to": evm_math.checksum_address(rng.randbytes(20))},
        {"value": auth.value + 1},
        {"valid_before": auth.valid_before + 60},
        {"valid_after": auth.valid_after - 1},
        {"nonce": rng.randbytes(32)},
    ):
        tampered = dataclasses.replace(auth, **change)
        assert _recover_typed(tampered, signature) != evm_address, change
        assert not verify_eoa_signature(
            transfer_digest(USDC_BASE, tampered), signature, evm_address
        )
    other_chain = dataclasses.replace(USDC_BASE, chain_id=84532)
    assert not verify_eoa_signature(transfer_digest(other_chain, auth), signature, evm_address)
    flipped = signature[:40] + bytes([signature[40] ^ 1]) + signature[41:]
    assert not verify_eoa_signature(transfer_digest(USDC_BASE, auth), flipped, evm_address)


# -- what the key refuses ---------------------------------------------------------------


def test_the_key_signs_only_transfers_from_its_own_address(evm_hsm: Hsm, evm_address: str) -> None:
    other = evm_math.checksum_address(random.Random(14).randbytes(20))
    auth = random_authorization(random.Random(14), from_address=other)
    with pytest.raises(UnsafeKey, match="signs transfers from"):
        evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth)
    assert evm_hsm.available is True


def test_one_profile_never_signs_for_the_other(evm_hsm: Hsm, evm_address: str) -> None:
    with pytest.raises(KeyNotFound, match="signs no JWS"):
        evm_hsm.sign_es256(EVM_KEY.key_id, b"data")
    auth = random_authorization(random.Random(15), from_address=evm_address)
    for key_id in (PAYMENT_KEY.key_id, "x402-test.v2", "audit.v1"):
        with pytest.raises(KeyNotFound):
            evm_hsm.sign_transfer_authorization(key_id, USDC_BASE, auth)


def test_a_key_configured_under_the_wrong_profile_is_refused_at_open(
    token: TestToken, evm_address: str
) -> None:
    for payment, evm_keys, words in (
        ([EVM_KEY], [], "not an EC P-256 key"),
        ([], [PAYMENT_KEY], "not a secp256k1"),
    ):
        h = Hsm(MODULE, token.label, token.pin, payment, evm_keys=evm_keys, retry_interval=0)
        try:
            with pytest.raises(UnsafeKey, match=words):
                h.open()
            assert h.available is False
        finally:
            h.close()
    with pytest.raises(ValueError, match="names a jws-es256 key"):
        Hsm(MODULE, token.label, token.pin, [PAYMENT_KEY], evm_keys=[KeyRef("payments", 7)])


# -- x402's own facilitator verification -------------------------------------------------


def _x402_payment(
    auth: TransferWithAuthorization, signature: bytes
) -> tuple[PaymentPayload, PaymentRequirements]:
    """What a resource server asked for (x402 v2 ``exact`` on Base) and the payment
    payload answering it, written as the x402 SDK's own types."""
    requirements = PaymentRequirements(
        scheme="exact",
        network=f"eip155:{USDC_BASE.chain_id}",
        asset=USDC_BASE.verifying_contract,
        amount=str(auth.value),
        pay_to=auth.to,
        max_timeout_seconds=300,
        extra={"name": USDC_BASE.name, "version": USDC_BASE.version},
    )
    authorization = {
        "from": auth.from_address,
        "to": auth.to,
        "value": str(auth.value),
        "validAfter": str(auth.valid_after),
        "validBefore": str(auth.valid_before),
        "nonce": "0x" + auth.nonce.hex(),
    }
    payload = PaymentPayload(
        x402_version=2,
        payload={"authorization": authorization, "signature": "0x" + signature.hex()},
        accepted=requirements,
    )
    return payload, requirements


def _fresh(
    rng: random.Random, address: str, now: int, window: int = 120
) -> TransferWithAuthorization:
    return TransferWithAuthorization(
        address, evm_math.checksum_address(rng.randbytes(20)), 10_000, now - 60, now + window,
        rng.randbytes(32),
    )  # fmt: skip


def test_x402_facilitator_verification_accepts_the_authorisation(
    evm_hsm: Hsm, evm_address: str
) -> None:
    chain = LocalEip3009Chain(USDC_BASE, {evm_address: 1_000_000})
    facilitator = ExactEvmScheme(chain)
    auth = _fresh(random.Random(16), evm_address, int(time.time()))
    sig = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth).to_bytes()
    result = facilitator.verify(*_x402_payment(auth, sig))
    assert result.is_valid is True, (result.invalid_reason, result.invalid_message)
    assert result.payer == evm_address


def test_x402_facilitator_verification_rejects_changes_other_signers_expiry_and_replay(
    evm_hsm: Hsm, evm_address: str
) -> None:
    rng = random.Random(17)
    chain = LocalEip3009Chain(USDC_BASE, {evm_address: 1_000_000})
    facilitator = ExactEvmScheme(chain)
    now = int(time.time())

    def verdict(auth: TransferWithAuthorization, signature: bytes) -> str | None:
        result = facilitator.verify(*_x402_payment(auth, signature))
        return None if result.is_valid else result.invalid_reason

    auth = _fresh(rng, evm_address, now)
    sig = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, auth).to_bytes()
    assert verdict(auth, sig) is None
    # A changed byte of the signature, or of the authorisation it signs.
    assert verdict(auth, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]) == ERR_INVALID_SIGNATURE
    assert verdict(dataclasses.replace(auth, value=auth.value + 1), sig) is not None
    assert verdict(dataclasses.replace(auth, nonce=rng.randbytes(32)), sig) is not None
    # Another signer: a key that is not the payer's, over the same authorisation.
    stranger = Account.create()
    forged = stranger.unsafe_sign_hash(transfer_digest(USDC_BASE, auth)).signature
    assert verdict(auth, bytes(forged)) == ERR_INVALID_SIGNATURE
    # An expired window (x402 wants validBefore at least 6 s ahead).
    short = _fresh(rng, evm_address, now, window=3)
    short_sig = evm_hsm.sign_transfer_authorization(EVM_KEY.key_id, USDC_BASE, short).to_bytes()
    assert verdict(short, short_sig) == ERR_VALID_BEFORE_EXPIRED
    # A replayed nonce: once the token has spent it, the same authorisation fails.
    chain.spend(evm_address, auth.nonce)
    assert verdict(auth, sig) == ERR_NONCE_ALREADY_USED
