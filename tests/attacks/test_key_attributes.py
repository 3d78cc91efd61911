"""Attack: with the user PIN, change what a payment key may do.

Keys were generated with CKA_MODIFIABLE true, so anyone holding the user PIN
(the signer host's operator, a leaked PIN file) could turn on CKA_DERIVE or
CKA_DECRYPT, or relabel a key, and the signer would go on using it. Keys are
now generated unmodifiable, and the signer refuses a key that is modifiable or
not CKA_PRIVATE. Each test runs python-pkcs11 directly (not our hsm package)
in a subprocess with a token of its own, so that logins never collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_token
from tests.helpers import MODULE, ROOT, TestToken

TAMPER = r"""
import sys
import pkcs11
from pkcs11 import Attribute, ObjectClass

MOD, LABEL, PIN = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
lib = pkcs11.lib(MOD)
with lib.get_token(token_label=LABEL).open(rw=True, user_pin=PIN) as s:
    for key_id in (b"v1", b"v2"):
        (key,) = s.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "payments",
             Attribute.ID: key_id}
        )
        print(key_id.decode(), "private", bool(key[Attribute.PRIVATE]),
              "modifiable", bool(key[Attribute.MODIFIABLE]))
        for attribute, value in ((Attribute.DERIVE, True), (Attribute.DECRYPT, True),
                                 (Attribute.LABEL, "other")):
            try:
                key[attribute] = value
                print(key_id.decode(), attribute.name, "CHANGED")
            except pkcs11.exceptions.PKCS11Error as exc:
                print(key_id.decode(), attribute.name, "refused", type(exc).__name__)
"""

OLD_STYLE = r"""
import sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters
from paywarden.hsm import Hsm, KeyRef, UnsafeKey

MOD, LABEL, PIN = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
lib = pkcs11.lib(MOD)
with lib.get_token(token_label=LABEL).open(rw=True, user_pin=PIN) as s:
    def gen(version, private, modifiable):
        params = s.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True, label="payments", id=f"v{version}".encode(),
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            private_template={
                Attribute.TOKEN: True, Attribute.PRIVATE: private, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: False,
                Attribute.SIGN_RECOVER: False, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
                Attribute.MODIFIABLE: modifiable,
            },
        )
    gen(5, True, True)    # what keys.py made before: modifiable
    gen(6, False, False)  # usable without logging in
lib.finalize()
for version in (1, 5, 6):
    hsm = Hsm(MOD, LABEL, PIN, [KeyRef("payments", version)], retry_interval=0)
    try:
        hsm.open()
        print(f"v{version} ACCEPTED")
    except UnsafeKey as exc:
        print(f"v{version} refused: {exc}")
    hsm.close()
"""


def _run_token_script(script: str, tok: TestToken, tmp_path: Path) -> list[str]:
    """Runs ``script`` against the token in a child process; its output lines."""
    path = tmp_path / "script.py"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(path), MODULE, tok.label, str(tok.pin_file)],
        cwd=ROOT, env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tok.pin not in proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_the_user_pin_cannot_turn_on_derive_or_decrypt_on_a_payment_key(tmp_path: Path) -> None:
    tok = make_token(tmp_path / "t", label="tamper")  # keys made by scripts/keys.py
    lines = _run_token_script(TAMPER, tok, tmp_path)
    for key_id in ("v1", "v2"):
        assert f"{key_id} private True modifiable False" in lines
        for attribute in ("DERIVE", "DECRYPT", "LABEL"):
            assert any(line.startswith(f"{key_id} {attribute} refused") for line in lines), lines
    assert not any("CHANGED" in line for line in lines), lines


def test_a_modifiable_or_public_private_key_is_refused_at_open(tmp_path: Path) -> None:
    tok = make_token(tmp_path / "t", label="oldstyle")
    lines = _run_token_script(OLD_STYLE, tok, tmp_path)
    assert lines[0] == "v1 ACCEPTED"
    assert lines[1].startswith("v5 refused") and "MODIFIABLE=True" in lines[1], lines
    assert lines[2].startswith("v6 refused") and "PRIVATE=False" in lines[2], lines
    # the key script says the same of a key made by an older keys.py
    proc = subprocess.run(
        [sys.executable, "scripts/keys.py", "--label", tok.label, "generate",
         "--pin-file", str(tok.pin_file), "--key", "payments.v5"],
        cwd=ROOT, env={**os.environ, "SOFTHSM2_CONF": str(tok.conf)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "already exists" in proc.stdout and "modifiable=True" in proc.stdout
    assert "UNSAFE" in proc.stderr and "generate a new version" in proc.stderr
