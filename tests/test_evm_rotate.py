"""``paywarden-keys rotate`` on an ``x402-exact-evm`` key keeps its profile: the new
version is a secp256k1 key pair made inside the real SoftHSM2 token (sensitive, never
extractable, sign-only, read back with python-pkcs11 itself), it has an address of its
own, and a running signer pays from it without a restart (and after one), while
GetPublicKeys lists both versions' addresses with their states.

The authorisations are checked with the x402 SDK's own exact-EVM verification and
eth-account's typed-data recovery, never only with our code.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from eth_account.messages import encode_typed_data
from paywarden.hsm import Hsm, KeyNotFound, KeyRef, PublicKeyInfo, TransferWithAuthorization
from paywarden.hsm import evm as evm_math
from paywarden.hsm.provision import delete_key, export_evm_public_key, generate_key
from paywarden.policy.vocabulary import KeyProfile, KeyState
from paywarden.signer.core import key_custody
from paywarden.signer.core.audit_events import SYSTEM
from paywarden.signer.store.sqlite import SqliteStore
from paywarden.v1 import signer_pb2
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme
from x402.schemas import PaymentPayload

from tests.attacks.kit import audit_log
from tests.helpers import MODULE, ROOT, Pki, TestToken, new_nonce, write_config
from tests.support.clients import Api, running_api
from tests.support.evm import USDC_BASE, eip3009_typed_data, random_authorization, usdc_x402_config
from tests.support.refusals import assert_refused
from tests.support.sessions import open_session
from tests.support.x402_chain import LocalEip3009Chain

ROTATED = KeyRef("x402-rotate", 1)
NEXT = KeyRef("x402-rotate", 2)
PAY_TO = "0x3333333333333333333333333333333333333333"  # no letters: its own EIP-55 form
ROTATE_CONFIG = usdc_x402_config(ROTATED)
# Granted by label: the label pays with its active version, whichever that is.
ROTATE_PACK = f"""
id = "x402-rotate"
version = 1
agents = ["agent-1"]

[assets.USDC]
keys = ["{ROTATED.label}"]
max_per_payment = "5"

[payees]
allow = ["{PAY_TO}"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USDC = "100" }}
"""
ROTATION_ACTOR = {"role": "custody", "id": "test"}
TASK = "Pay for the weather feed across an x402 key rotation"

# The private key's attributes as python-pkcs11 itself reads them, in a process of its
# own (its login never meets this process's), and whether its value can be read.
_PKCS11_ATTRIBUTES = textwrap.dedent(
    """
    import json, sys
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    module, label, pin_file, key_label, key_id = sys.argv[1:6]
    pin = open(pin_file).read().strip()
    out = {}
    tok = pkcs11.lib(module).get_token(token_label=label)
    with tok.open(user_pin=pin) as s:
        (key,) = s.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                Attribute.LABEL: key_label, Attribute.ID: key_id.encode()})
        for name in ("SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE",
                     "SIGN", "SIGN_RECOVER", "DECRYPT", "UNWRAP", "DERIVE", "MODIFIABLE"):
            out[name] = bool(key[getattr(Attribute, name)])
        out["secp256k1"] = bytes(key[Attribute.EC_PARAMS]) == bytes(
            encode_named_curve_parameters("secp256k1"))
        try:
            out["VALUE"] = "READ " + bytes(key[Attribute.VALUE]).hex()[:4]
        except pkcs11.exceptions.PKCS11Error as exc:
            out["VALUE"] = type(exc).__name__
    print(json.dumps(out))
    """
)


@pytest.fixture
def rotated_address(token: TestToken) -> Iterator[str]:
    """The first version, generated on the session token; every version of the label is
    destroyed afterwards, so that the token is again what other modules expect."""
    made, _status = generate_key(MODULE, token.label, token.pin, ROTATED, KeyProfile.X402_EXACT_EVM)
    assert made
    try:
        yield export_evm_public_key(MODULE, token.label, token.pin, ROTATED).address
    finally:
        for ref in (ROTATED, NEXT):
            delete_key(MODULE, token.label, token.pin, ref)


def _rotation_keys_cli(token: TestToken, *args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/keys.py ARGS`` as the security team runs it, on the session token."""
    return subprocess.run(
        [sys.executable, "scripts/keys.py", *args],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _pkcs11_attributes(token: TestToken, ref: KeyRef) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PKCS11_ATTRIBUTES, MODULE, token.label, str(token.pin_file),
         ref.label, f"v{ref.version}"],
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def _rotation_payment(session_id: str, key_id: str) -> signer_pb2.SignX402Request:
    return signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=key_id,
        requirements=signer_pb2.X402PaymentRequirements(
            x402_version=2,
            scheme="exact",
            network=f"eip155:{USDC_BASE.chain_id}",
            asset=USDC_BASE.verifying_contract,
            pay_to=PAY_TO,
            amount="1000000",
            resource="https://api.example/weather",
            max_timeout_seconds=120,
        ),
        reference="inv-rotate",
        purpose="the weather feed",
        nonce=new_nonce(),
        expires_at=int(time.time()) + 240,
    )


def _accepted_from(answer: signer_pb2.SignX402Response, address: str) -> None:
    """x402's own facilitator check accepts the authorisation and names ``address`` as
    the payer; eth-account recovers ``address`` from its typed data."""
    assert answer.status == signer_pb2.SIGNED and answer.from_address == address
    payload = PaymentPayload.model_validate_json(base64.b64decode(answer.x_payment))
    chain = LocalEip3009Chain(USDC_BASE, {address: 10**12})
    result = ExactEvmScheme(chain).verify(payload, payload.accepted)
    assert result.is_valid is True, (result.invalid_reason, result.invalid_message)
    assert result.payer == address
    a = payload.payload["authorization"]
    auth = TransferWithAuthorization(
        a["from"], a["to"], int(a["value"]), int(a["validAfter"]), int(a["validBefore"]),
        bytes.fromhex(a["nonce"][2:]),
    )  # fmt: skip
    typed = encode_typed_data(full_message=eip3009_typed_data(USDC_BASE, auth))
    assert Account.recover_message(typed, signature=payload.payload["signature"]) == address


def _evm_keys_once(api: Api, shows: str) -> list[tuple[str, str, str]]:
    """GetPublicKeys' ``evm_keys`` once they list ``shows``: a change made by the custody
    tool (another process) reaches the listing within the key view's reload period."""
    deadline = time.monotonic() + 30
    while True:
        keys = api.signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=30)
        listed = [(k.key_id, k.address, k.state) for k in keys.evm_keys]
        if shows in {k for k, _a, _s in listed} or time.monotonic() > deadline:
            return listed
        time.sleep(0.05)


def test_rotating_an_x402_key_keeps_its_profile_and_pays_from_the_new_address(
    tmp_path: Path, pki: Pki, token: TestToken, rotated_address: str
) -> None:
    config = write_config(
        tmp_path / "cfg", token, pki, extra=ROTATE_CONFIG, packs={"x402.toml": ROTATE_PACK}
    )
    with running_api(config, pki) as (_srv, api):
        sid = open_session(api.planner, "agent-1", "50", asset="USDC", task=TASK, timeout=30)
        before = api.signer.SignX402(_rotation_payment(sid, ROTATED.label), timeout=30)
        assert before.key_id == ROTATED.key_id
        _accepted_from(before, rotated_address)

        rotated = _rotation_keys_cli(
            token, "rotate", "--config", str(config), "--label", "x402-rotate"
        )
        assert rotated.returncode == 0, rotated.stderr
        lines = rotated.stdout.splitlines()
        assert lines[0] == f"key {NEXT.key_id}: generated inside the HSM, active"
        assert lines[2:] == [f"key {ROTATED.key_id}: verify-only"]
        new_address = lines[1].removeprefix(f"key {NEXT.key_id}: address ")
        assert new_address == evm_math.checksum_address(evm_math.parse_address(new_address))
        assert new_address != rotated_address
        assert f"warning: {new_address} is a new address: fund it" in rotated.stderr
        assert token.pin not in rotated.stdout + rotated.stderr

        # The new version is a secp256k1 key (not P-256), its address exportable, its
        # private half as the first one's: sensitive, never extractable, sign-only.
        exported = _rotation_keys_cli(
            token, "--label", token.label, "export", "--pin-file", str(token.pin_file),
            "--key", NEXT.key_id, "--format", "address",
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        assert exported.stdout == new_address + "\n"
        listed = _rotation_keys_cli(
            token, "--label", token.label, "list", "--pin-file", str(token.pin_file)
        )
        (row,) = [r for r in listed.stdout.splitlines() if r.startswith(f"{NEXT.key_id}\t")]
        assert row.split("\t")[1:] == [
            "profile=x402-exact-evm", "sensitive=True", "extractable=False",
            "never_extractable=True", "sign=True", "decrypt=False", "private=True",
            "modifiable=False",
        ]  # fmt: skip
        attributes = _pkcs11_attributes(token, NEXT)
        assert attributes == {
            **_pkcs11_attributes(token, ROTATED),
            "SENSITIVE": True, "ALWAYS_SENSITIVE": True, "EXTRACTABLE": False,
            "NEVER_EXTRACTABLE": True, "SIGN": True, "SIGN_RECOVER": False, "DECRYPT": False,
            "UNWRAP": False, "DERIVE": False, "MODIFIABLE": False, "secp256k1": True,
        }  # fmt: skip
        assert not str(attributes["VALUE"]).startswith("READ")

        # Without a restart: the label pays from the new address; the old version is
        # verify-only and pays nothing.
        after = api.signer.SignX402(_rotation_payment(sid, ROTATED.label), timeout=30)
        assert after.key_id == NEXT.key_id
        _accepted_from(after, new_address)
        assert_refused(
            api.signer.SignX402,
            _rotation_payment(sid, ROTATED.key_id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "KEY_NOT_ACTIVE",
        )
        assert _evm_keys_once(api, NEXT.key_id) == [
            (ROTATED.key_id, rotated_address, "verify-only"),
            (NEXT.key_id, new_address, "active"),
        ]

    # After a restart the configuration still names the retired v1: the signer opens
    # without needing it and finds v2 on the token when it signs.
    with running_api(config, pki) as (_srv, api):
        sid = open_session(api.planner, "agent-1", "50", asset="USDC", task=TASK, timeout=30)
        again = api.signer.SignX402(_rotation_payment(sid, ROTATED.label), timeout=30)
        assert again.key_id == NEXT.key_id
        _accepted_from(again, new_address)

    (record,) = [r for r in audit_log(tmp_path / "cfg" / "state.db") if r["action"] == "key.rotate"]
    assert (record["key_id"], record["profile"], record["verify_only"]) == (
        NEXT.key_id,
        "x402-exact-evm",
        [ROTATED.key_id],
    )
    # Destroying the retired version leaves its address without a key: said plainly.
    destroyed = _rotation_keys_cli(
        token, "destroy", "--config", str(config), "--key", ROTATED.key_id, "--grace-hours", "0"
    )
    assert destroyed.returncode == 0, destroyed.stderr
    assert f"warning: {rotated_address} had no other key" in destroyed.stderr
    assert new_address not in destroyed.stderr


def test_the_hsm_finds_an_x402_version_it_was_not_opened_with_when_it_signs(
    token: TestToken, rotated_address: str
) -> None:
    """A version rotated in after the token was opened (here: one it was never told of)
    is looked up by label and CKA_ID when it first signs, checked as at open, and kept;
    an id that is no x402 key on the token (a P-256 key, the audit key, a version not
    there) is unknown, and the token stays usable."""
    hsm = Hsm(MODULE, token.label, token.pin, [KeyRef("payments", 1)], retry_interval=0)
    hsm.open()
    try:
        assert hsm.evm_public_keys() == []
        auth = random_authorization(random.Random(14), from_address=rotated_address)
        signature = hsm.sign_transfer_authorization(ROTATED.key_id, USDC_BASE, auth)
        typed = encode_typed_data(full_message=eip3009_typed_data(USDC_BASE, auth))
        assert Account.recover_message(typed, signature=signature.to_bytes()) == rotated_address
        assert [k.address for k in hsm.evm_public_keys()] == [rotated_address]
        for key_id in ("payments.v1", "audit.v1", NEXT.key_id, "not-a-key-id"):
            with pytest.raises(KeyNotFound):
                hsm.sign_transfer_authorization(key_id, USDC_BASE, auth)
        assert hsm.available is True
        assert len(hsm.sign_es256("payments.v1", b"still signs")) == 64
    finally:
        hsm.close()


def _spki_on(curve: ec.EllipticCurve) -> bytes:
    return (
        ec.generate_private_key(curve)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture
def profile_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def test_rotate_asks_for_the_labels_own_profile(profile_store: SqliteStore) -> None:
    """The profile comes from the versions' own public keys (their curve), not from the
    command line: each label gets a new version of its own kind."""
    evm_v1 = PublicKeyInfo(KeyRef("wallet", 1), _spki_on(ec.SECP256K1()))
    jws_v1 = PublicKeyInfo(KeyRef("payments", 1), _spki_on(ec.SECP256R1()))
    key_custody.register_configured(profile_store, [evm_v1, jws_v1], 100, SYSTEM)
    asked: list[tuple[str, KeyProfile]] = []

    def generate(ref: KeyRef, profile: KeyProfile) -> PublicKeyInfo:
        asked.append((ref.key_id, profile))
        curve = ec.SECP256K1() if profile is KeyProfile.X402_EXACT_EVM else ec.SECP256R1()
        return PublicKeyInfo(ref, _spki_on(curve))

    key_custody.rotate(profile_store, "wallet", generate, 150, ROTATION_ACTOR)
    key_custody.rotate(profile_store, "payments", generate, 150, ROTATION_ACTOR)
    assert asked == [
        ("wallet.v2", KeyProfile.X402_EXACT_EVM),
        ("payments.v2", KeyProfile.JWS_ES256),
    ]


def test_a_rotation_that_would_change_a_labels_profile_is_refused(
    profile_store: SqliteStore,
) -> None:
    """A new version of another curve than asked, and a label whose versions disagree (a
    store edited by hand), get no new version: nothing changes state."""
    key_custody.register_configured(
        profile_store, [PublicKeyInfo(KeyRef("wallet", 1), _spki_on(ec.SECP256K1()))], 100, SYSTEM
    )
    with pytest.raises(key_custody.CustodyRefused, match="not generated as a x402-exact-evm key"):
        key_custody.rotate(
            profile_store,
            "wallet",
            lambda ref, _profile: PublicKeyInfo(ref, _spki_on(ec.SECP256R1())),
            150,
            ROTATION_ACTOR,
        )
    key_custody.register_configured(
        profile_store,
        [
            PublicKeyInfo(KeyRef("mixed", 1), _spki_on(ec.SECP256K1())),
            PublicKeyInfo(KeyRef("mixed", 2), _spki_on(ec.SECP256R1())),
        ],
        100,
        SYSTEM,
    )
    with pytest.raises(key_custody.CustodyRefused, match="not of one profile"):
        key_custody.rotate(
            profile_store, "mixed", lambda ref, _p: pytest.fail("generated"), 150, ROTATION_ACTOR
        )
    assert {v.key_id: v.state for v in profile_store.key_versions()} == {
        "mixed.v1": KeyState.ACTIVE,
        "mixed.v2": KeyState.ACTIVE,
        "wallet.v1": KeyState.ACTIVE,
    }
