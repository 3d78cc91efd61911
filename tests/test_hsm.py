"""The HSM layer against a real SoftHSM2 token, and the security team's keys.py.

In-process tests use the session ``token`` only (python-pkcs11 reads
SOFTHSM2_CONF once per process); anything that needs another token runs in a
subprocess with its own SOFTHSM2_CONF.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from joserfc import jws
from joserfc.jwk import ECKey
from paywarden.hsm import Hsm, HsmUnavailable, KeyNotFound, KeyRef, PublicKeyInfo
from paywarden.hsm.provision import list_keys

from tests.conftest import make_token
from tests.helpers import MODULE, ROOT, TestToken

KEYS = [KeyRef("payments", 1), KeyRef("payments", 2)]
SUBPROCESS_TIMEOUT = 120


# -- helpers -------------------------------------------------------------


def _verify(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    """Verifies a raw r||s ES256 signature over SHA-256 of ``data``."""
    assert len(signature) == 64
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    pub.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pub_of(keys: list[PublicKeyInfo], key_id: str) -> ec.EllipticCurvePublicKey:
    (info,) = [k for k in keys if k.key_id == key_id]
    return info.public_key()


@pytest.fixture
def hsm(token: TestToken) -> Iterator[Hsm]:
    """An open Hsm on the session token, closed after the test (one per process)."""
    h = Hsm(MODULE, token.label, token.pin, KEYS, retry_interval=0)
    h.open()
    try:
        yield h
    finally:
        h.close()


# -- 1. key attributes read back from the token ----------------------------


def test_payment_keys_are_sensitive_never_extractable_sign_only(token: TestToken) -> None:
    statuses = {s.ref.key_id: s for s in list_keys(MODULE, token.label, token.pin)}
    assert {"payments.v1", "payments.v2"} <= set(statuses)
    for key_id in ("payments.v1", "payments.v2"):
        s = statuses[key_id]
        assert s.sensitive is True, key_id
        assert s.extractable is False, key_id
        assert s.never_extractable is True, key_id
        assert s.always_sensitive is True, key_id
        assert s.can_sign is True, key_id
        assert s.can_decrypt is False, key_id


# -- 2. signing, public keys, errors ---------------------------------------


def test_sign_es256_verifies_with_exported_public_key(hsm: Hsm) -> None:
    assert hsm.available is True
    keys = hsm.public_keys()
    assert [k.key_id for k in keys] == ["payments.v1", "payments.v2"]
    assert keys[0].spki_der != keys[1].spki_der
    for i, key_id in enumerate(["payments.v1", "payments.v2"]):
        data = f"payload for {key_id}".encode()
        sig = hsm.sign_es256(key_id, data)
        assert isinstance(sig, bytes)
        assert len(sig) == 64
        _verify(keys[i].public_key(), sig, data)
        # The signature is over SHA-256 of the data, which the Hsm computed.
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        keys[i].public_key().verify(
            utils.encode_dss_signature(r, s),
            hashlib.sha256(data).digest(),
            ec.ECDSA(utils.Prehashed(hashes.SHA256())),
        )
        with pytest.raises(InvalidSignature):
            _verify(keys[i].public_key(), sig, data + b"!")


def test_signature_for_v1_does_not_verify_under_v2(hsm: Hsm) -> None:
    v1, v2 = hsm.public_keys()
    data = b"cross-key check"
    sig = hsm.sign_es256("payments.v1", data)
    _verify(v1.public_key(), sig, data)
    with pytest.raises(InvalidSignature):
        _verify(v2.public_key(), sig, data)


def test_jwk_equals_spki_key_and_verifies_a_jws(hsm: Hsm) -> None:
    for info in hsm.public_keys():
        jwk = info.jwk()
        assert "d" not in jwk
        assert jwk["kid"] == info.key_id
        assert jwk["alg"] == "ES256"
        spki_numbers = info.public_key().public_numbers()

        as_jwk: dict[str, str | list[str]] = dict(jwk)
        jose_key = ECKey.import_key(as_jwk)
        assert not jose_key.is_private
        assert jose_key.public_key.public_numbers() == spki_numbers

        pyjwk = jwt.PyJWK(jwk)
        assert pyjwk.key.public_numbers() == spki_numbers

        # The 64-byte r||s signature is the JWS ES256 encoding as it is.
        header = _b64url(json.dumps({"alg": "ES256", "kid": info.key_id}).encode())
        payload = _b64url(b'{"amount":"1.00"}')
        signing_input = f"{header}.{payload}".encode("ascii")
        compact = f"{header}.{payload}.{_b64url(hsm.sign_es256(info.key_id, signing_input))}"
        obj = jws.deserialize_compact(compact, jose_key, algorithms=["ES256"])
        assert obj.payload == b'{"amount":"1.00"}'
        assert jwt.api_jws.decode(compact, pyjwk.key, algorithms=["ES256"]) == (
            b'{"amount":"1.00"}'
        )


def test_unknown_key_id_raises_key_not_found(hsm: Hsm) -> None:
    for key_id in ("payments.v3", "other.v1", "", "payments"):
        with pytest.raises(KeyNotFound):
            hsm.sign_es256(key_id, b"data")
    assert hsm.available is True  # an unknown key id does not break the session


def test_wrong_pin_is_unavailable_and_never_shown(token: TestToken) -> None:
    wrong = "wrong-" + token.pin[::-1]
    h = Hsm(MODULE, token.label, wrong, KEYS, retry_interval=0)
    try:
        with pytest.raises(HsmUnavailable) as info:
            h.open()
        assert "PIN incorrect" in str(info.value)
        text = "".join(traceback.format_exception(info.value))
        assert wrong not in text
        assert token.pin not in text
        assert wrong not in h.last_error
        assert h.available is False
        with pytest.raises(HsmUnavailable) as sign_info:
            h.sign_es256("payments.v1", b"data")
        assert wrong not in str(sign_info.value)
        assert wrong not in repr(h)
        assert wrong not in str(h)
    finally:
        h.close()


def test_repr_does_not_contain_pin(hsm: Hsm, token: TestToken) -> None:
    assert token.pin not in repr(hsm)
    assert token.pin not in str(hsm)
    assert token.label in repr(hsm)


def test_configured_key_missing_on_token_fails_open(token: TestToken) -> None:
    h = Hsm(MODULE, token.label, token.pin, [*KEYS, KeyRef("payments", 999)], retry_interval=0)
    try:
        with pytest.raises(KeyNotFound) as info:
            h.open()
        assert "payments.v999" in str(info.value)
        assert h.available is False
    finally:
        h.close()


# -- 3. serialisation --------------------------------------------------------


def test_concurrent_signing_from_threads_is_serialised(hsm: Hsm) -> None:
    threads_n, per_thread = 8, 100
    pubs = {k.key_id: k.public_key() for k in hsm.public_keys()}
    results: list[list[tuple[str, bytes, bytes]]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            key_id = "payments.v1" if i % 2 == 0 else "payments.v2"
            for n in range(per_thread):
                data = f"thread {i} signature {n}".encode()
                results[i].append((key_id, data, hsm.sign_es256(key_id, data)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert [len(r) for r in results] == [per_thread] * threads_n
    seen = set()
    for per in results:
        for key_id, data, sig in per:
            _verify(pubs[key_id], sig, data)
            seen.add(sig)
    assert len(seen) == threads_n * per_thread
    assert hsm.available is True


_MIXED_CALLS_SCRIPT = textwrap.dedent(
    """
    import sys
    import threading
    from pathlib import Path

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from paywarden.hsm import Hsm, KeyRef
    from paywarden.hsm.provision import token_exists

    label, pin_file, module = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    pin = pin_file.read_text(encoding="utf-8").strip()
    hsm = Hsm(module, label, pin, [KeyRef("payments", 1), KeyRef("payments", 2)])
    hsm.open()
    pubs = {k.key_id: k.public_key() for k in hsm.public_keys()}
    signed, errors = [], []
    lookups = [0]
    barrier = threading.Barrier(10)

    def signer(i):
        try:
            barrier.wait(timeout=60)
            key_id = "payments.v1" if i % 2 == 0 else "payments.v2"
            for n in range(100):
                data = f"{i}/{n}".encode()
                signed.append((key_id, data, hsm.sign_es256(key_id, data)))
        except BaseException as exc:
            errors.append(repr(exc))

    def looker():
        try:
            barrier.wait(timeout=60)
            for _ in range(100):
                if token_exists(module, label):
                    lookups[0] += 1
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=signer, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=looker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ERRORS", len(errors), errors[:3])
    print("LOOKUPS", lookups[0])
    bad = 0
    for key_id, data, sig in signed:
        der = utils.encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        )
        try:
            pubs[key_id].verify(der, data, ec.ECDSA(hashes.SHA256()))
        except Exception:
            bad += 1
    print("SIGNED", len(signed), "BAD", bad)
    hsm.close()
    """
)


def test_signing_concurrent_with_token_lookups_does_not_crash(tmp_path: Path) -> None:
    """Signing threads and threads enumerating tokens (other PKCS#11 calls, outside
    python-pkcs11's per-session operation lock) at once: only PKCS11_LOCK keeps
    SoftHSM2 from crashing. Run in a subprocess so that a crash fails this test only."""
    tok = make_token(tmp_path / "t", label="threads")
    script = tmp_path / "mixed.py"
    script.write_text(_MIXED_CALLS_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), tok.label, str(tok.pin_file), MODULE],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.splitlines() == ["ERRORS 0 []", "LOOKUPS 200", "SIGNED 800 BAD 0"]
    assert tok.pin not in proc.stdout + proc.stderr


# -- 4. recovery after the token goes away (subprocess) --------------------

_RECOVERY_SCRIPT = textwrap.dedent(
    """
    import shutil
    import sys
    from pathlib import Path

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from paywarden.hsm import Hsm, HsmUnavailable, KeyRef

    base, label, pin_file, module = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    pin = pin_file.read_text(encoding="utf-8").strip()
    hsm = Hsm(module, label, pin, [KeyRef("payments", 1), KeyRef("payments", 2)], retry_interval=0)

    def verifies(sig, data):
        pub = hsm.public_keys()[0].public_key()
        der = utils.encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        )
        try:
            pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except Exception:
            return False
        return len(sig) == 64

    hsm.open()
    if hsm.available and verifies(hsm.sign_es256("payments.v1", b"before"), b"before"):
        print("SIGNED-BEFORE", flush=True)

    tokens = base / "tokens"
    shutil.move(str(tokens), str(base / "tokens.away"))
    tokens.mkdir()

    for attempt in range(2):
        try:
            hsm.sign_es256("payments.v1", b"while away")
            print("SIGNED-WHILE-AWAY", flush=True)
        except HsmUnavailable as exc:
            if pin not in str(exc):
                print("SIGN-UNAVAILABLE", flush=True)
        try:
            hsm.check()
            print("CHECK-OK-WHILE-AWAY", flush=True)
        except HsmUnavailable as exc:
            if pin not in str(exc):
                print("CHECK-UNAVAILABLE", flush=True)
        print("AVAILABLE", hsm.available, flush=True)
    if [k.key_id for k in hsm.public_keys()] == ["payments.v1", "payments.v2"]:
        print("PUBLIC-KEYS-KEPT", flush=True)

    tokens.rmdir()
    shutil.move(str(base / "tokens.away"), str(tokens))

    sig = hsm.sign_es256("payments.v1", b"after")
    if verifies(sig, b"after"):
        print("SIGNED-AFTER", flush=True)
    hsm.check()
    print("CHECK-OK-AFTER", flush=True)
    print("AVAILABLE", hsm.available, flush=True)
    hsm.close()
    """
)


def test_recovers_after_token_goes_away_and_comes_back(tmp_path: Path) -> None:
    tok = make_token(tmp_path / "t", label="recover")
    script = tmp_path / "recover.py"
    script.write_text(_RECOVERY_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(tok.base), tok.label, str(tok.pin_file), MODULE],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "SIGNED-BEFORE",
        "SIGN-UNAVAILABLE",
        "CHECK-UNAVAILABLE",
        "AVAILABLE False",
        "SIGN-UNAVAILABLE",
        "CHECK-UNAVAILABLE",
        "AVAILABLE False",
        "PUBLIC-KEYS-KEPT",
        "SIGNED-AFTER",
        "CHECK-OK-AFTER",
        "AVAILABLE True",
    ], proc.stderr
    assert tok.pin not in proc.stdout + proc.stderr


# -- 5. scripts/keys.py as the security team runs it ----------------------


def _secrets(tok: TestToken) -> list[str]:
    return [tok.pin, tok.so_pin_file.read_text(encoding="utf-8").strip()]


def _keys(
    tok: TestToken, *args: str, extra_secrets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs scripts/keys.py on ``tok``; asserts that no PIN is ever printed."""
    proc = subprocess.run(
        [sys.executable, "scripts/keys.py", "--label", tok.label, *args],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    for secret in (*_secrets(tok), *extra_secrets):
        assert secret not in proc.stdout, args
        assert secret not in proc.stderr, args
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr, args
    return proc


@pytest.fixture
def keys_token(tmp_path: Path) -> TestToken:
    return make_token(tmp_path / "keys", label="keys-test")


def _pin_args(tok: TestToken) -> list[str]:
    return ["--pin-file", str(tok.pin_file)]


def _export_key(tok: TestToken, key: str, fmt: str) -> str:
    proc = _keys(tok, "export", *_pin_args(tok), "--key", key, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pem_numbers(pem: str) -> ec.EllipticCurvePublicNumbers:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    return key.public_numbers()


def _jwk_numbers(text: str) -> ec.EllipticCurvePublicNumbers:
    jwk = json.loads(text)
    assert "d" not in jwk
    key = ECKey.import_key(jwk)
    assert not key.is_private
    numbers: ec.EllipticCurvePublicNumbers = key.public_key.public_numbers()
    return numbers


def test_keys_generate_existing_key_is_idempotent(keys_token: TestToken) -> None:
    before = _export_key(keys_token, "payments.v1", "pem")
    proc = _keys(keys_token, "generate", *_pin_args(keys_token), "--key", "payments.v1")
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in proc.stdout
    assert "payments.v1" in proc.stdout
    assert _export_key(keys_token, "payments.v1", "pem") == before  # not regenerated


def test_keys_generate_new_key_then_list_shows_it(keys_token: TestToken) -> None:
    listed = _keys(keys_token, "list", *_pin_args(keys_token))
    assert listed.returncode == 0, listed.stderr
    assert "payments.v3" not in listed.stdout

    proc = _keys(keys_token, "generate", *_pin_args(keys_token), "--key", "payments.v3")
    assert proc.returncode == 0, proc.stderr
    assert "payments.v3: generated" in proc.stdout

    listed = _keys(keys_token, "list", *_pin_args(keys_token))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
    assert {"payments.v1", "payments.v2", "payments.v3"} <= set(rows)
    row = rows["payments.v3"]
    for field in (
        "sensitive=True",
        "extractable=False",
        "never_extractable=True",
        "sign=True",
        "decrypt=False",
    ):
        assert field in row.split("\t"), row

    again = _keys(keys_token, "generate", *_pin_args(keys_token), "--key", "payments.v3")
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout


_HSM_PEMS_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    from paywarden.hsm import Hsm, KeyRef

    label, pin_file, module = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    pin = pin_file.read_text(encoding="utf-8").strip()
    hsm = Hsm(module, label, pin, [KeyRef("payments", 1), KeyRef("payments", 2)])
    hsm.open()
    print(json.dumps({k.key_id: k.spki_pem for k in hsm.public_keys()}))
    hsm.close()
    """
)


def test_keys_export_pem_and_jwk_match_hsm_public_keys(
    keys_token: TestToken, tmp_path: Path
) -> None:
    script = tmp_path / "hsm_pems.py"
    script.write_text(_HSM_PEMS_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), keys_token.label, str(keys_token.pin_file), MODULE],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(keys_token.conf)},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert keys_token.pin not in proc.stdout + proc.stderr
    hsm_pems: dict[str, str] = json.loads(proc.stdout)
    assert sorted(hsm_pems) == ["payments.v1", "payments.v2"]

    exported = {}
    for key in ("payments.v1", "payments.v2"):
        pem = _export_key(keys_token, key, "pem")
        assert pem.startswith("-----BEGIN PUBLIC KEY-----")
        jwk_text = _export_key(keys_token, key, "jwk")
        assert json.loads(jwk_text)["kid"] == key
        assert _pem_numbers(pem) == _jwk_numbers(jwk_text)
        assert _pem_numbers(pem) == _pem_numbers(hsm_pems[key])
        exported[key] = _pem_numbers(pem)
    assert exported["payments.v1"] != exported["payments.v2"]

    out = tmp_path / "v1.pem"
    proc = _keys(
        keys_token, "export", *_pin_args(keys_token), "--key", "payments.v1", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="ascii")
    assert "PRIVATE KEY" not in text
    assert _pem_numbers(text) == exported["payments.v1"]


def test_keys_init_token_again_is_idempotent(keys_token: TestToken) -> None:
    proc = _keys(
        keys_token,
        "init-token",
        "--so-pin-file",
        str(keys_token.so_pin_file),
        *_pin_args(keys_token),
    )
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in proc.stdout
    # The token and its keys are untouched.
    listed = _keys(keys_token, "list", *_pin_args(keys_token))
    assert listed.returncode == 0, listed.stderr
    assert "payments.v1\t" in listed.stdout
    assert "payments.v2\t" in listed.stdout


def test_keys_wrong_pin_fails_without_showing_it(keys_token: TestToken, tmp_path: Path) -> None:
    wrong = "wrong-" + keys_token.pin[::-1]
    wrong_file = tmp_path / "wrong.pin"
    wrong_file.write_text(wrong + "\n", encoding="utf-8")
    for args in (
        ["list"],
        ["generate", "--key", "payments.v4"],
        ["export", "--key", "payments.v1"],
    ):
        proc = _keys(keys_token, *args, "--pin-file", str(wrong_file), extra_secrets=(wrong,))
        assert proc.returncode != 0, args
        assert proc.stderr.strip(), args
        assert "BEGIN PUBLIC KEY" not in proc.stdout
    listed = _keys(keys_token, "list", *_pin_args(keys_token))
    assert "payments.v4" not in listed.stdout


def test_keys_missing_pin_file_names_the_file(keys_token: TestToken, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "user.pin"
    proc = _keys(keys_token, "list", "--pin-file", str(missing))
    assert proc.returncode != 0
    assert str(missing) in proc.stderr


def test_keys_invalid_key_id_is_refused(keys_token: TestToken) -> None:
    for command in ("generate", "export"):
        proc = _keys(keys_token, command, *_pin_args(keys_token), "--key", "Bad_Label.v1")
        assert proc.returncode != 0, command
        assert "Bad_Label.v1" in proc.stderr
        assert "BEGIN PUBLIC KEY" not in proc.stdout
    listed = _keys(keys_token, "list", *_pin_args(keys_token))
    assert listed.returncode == 0, listed.stderr
    assert "bad_label" not in listed.stdout.lower()


def test_keys_has_no_way_to_export_a_private_key(keys_token: TestToken) -> None:
    top = _keys(keys_token, "--help")
    assert top.returncode == 0
    assert "{init-token,generate,list,export,rotate,revoke,destroy}" in top.stdout

    export_help = _keys(keys_token, "export", "--help")
    assert export_help.returncode == 0
    assert "{pem,jwk,address}" in export_help.stdout
    assert "private" not in export_help.stdout.lower().replace("(never a private one)", "")

    pin = _pin_args(keys_token)
    for args in (
        ["export", *pin, "--key", "payments.v1", "--private"],
        ["export", *pin, "--key", "payments.v1", "--private-key"],
        ["export", *pin, "--key", "payments.v1", "--format", "pkcs8"],
        ["export", *pin, "--key", "payments.v1", "--format", "der"],
        ["export", *pin, "--key", "payments.v1", "--format", "private"],
        ["export-private", *pin, "--key", "payments.v1"],
        ["export-key", *pin, "--key", "payments.v1"],
    ):
        proc = _keys(keys_token, *args)
        assert proc.returncode != 0, args
        assert "BEGIN" not in proc.stdout, args

    for fmt in ("pem", "jwk"):
        text = _export_key(keys_token, "payments.v1", fmt)
        assert "PRIVATE" not in text.upper()


def test_a_rejected_pin_is_never_retried(token: TestToken) -> None:
    """A real HSM locks its user after a few bad logins: one refusal latches."""
    from paywarden.hsm import HsmPinRejected

    hsm = Hsm(MODULE, token.label, "not-the-pin", [KeyRef("payments", 1)], retry_interval=0)
    with pytest.raises(HsmPinRejected):
        hsm.open()
    for attempt in (hsm.open, hsm.check, lambda: hsm.sign_es256("payments.v1", b"x")):
        with pytest.raises(HsmPinRejected, match="not retrying"):
            attempt()
    assert not hsm.available


UNSAFE_KEYS_SCRIPT = r"""
import os, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from paywarden.hsm import Hsm, KeyRef, UnsafeKey

MOD, LABEL, PIN = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
lib = pkcs11.lib(MOD)
with lib.get_token(token_label=LABEL).open(rw=True, user_pin=PIN) as s:
    def gen(version, curve, sensitive, derive, modifiable=False):
        params = s.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
        )
        params.generate_keypair(
            store=True, label="payments", id=f"v{version}".encode(),
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            private_template={
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: sensitive,
                Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: derive,
                Attribute.SIGN_RECOVER: False, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
                Attribute.MODIFIABLE: modifiable,
            },
        )
    gen(7, "secp256r1", True, True)     # may derive
    gen(8, "secp256r1", False, False, modifiable=True)   # was readable in the clear once
    for o in s.get_objects({Attribute.ID: b"v8", Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
        o[Attribute.SENSITIVE] = True
    gen(9, "secp384r1", True, False)    # not P-256
lib.finalize()
for version in (7, 8, 9):
    hsm = Hsm(MOD, LABEL, PIN, [KeyRef("payments", version)], retry_interval=0)
    for attempt in range(2):  # the second attempt proves no session was left logged in
        try:
            hsm.open()
            print(f"v{version} ACCEPTED")
        except UnsafeKey as exc:
            print(f"v{version} refused: {exc}")
    hsm.close()
"""


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    tok = make_token(tmp_path / "t", label="unsafe")
    script = tmp_path / "unsafe.py"
    script.write_text(UNSAFE_KEYS_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), MODULE, tok.label, str(tok.pin_file)],
        cwd=ROOT, env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "ACCEPTED" not in proc.stdout
    assert len(lines) == 6
    assert all("refused" in line for line in lines)
    assert "DERIVE=True" in lines[0] and "DERIVE=True" in lines[1]
    assert "ALWAYS_SENSITIVE=False" in lines[2]
    assert "P-256" in lines[4]


def test_keys_script_names_a_missing_pkcs11_module(tmp_path: Path, token: TestToken) -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/keys.py", "--module", str(tmp_path / "missing.so"),
         "--label", token.label, "list", "--pin-file", str(token.pin_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot load the PKCS#11 module" in proc.stderr and "missing.so" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert token.pin not in proc.stderr + proc.stdout
