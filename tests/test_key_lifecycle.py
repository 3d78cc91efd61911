"""Payment key versions through their lifecycle: the store's rows and rules, the custody
commands over a real SoftHSM2 token, and a real signer that picks each change up
without a restart (issue 12, points 1 and 2)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.hsm import Hsm, KeyNotFound, KeyRef, PublicKeyInfo
from paywarden.policy import PackError, load_pack
from paywarden.policy.vocabulary import KeyState
from paywarden.signer.auditlog.checkpoints import checkpoint_body
from paywarden.signer.core import key_custody
from paywarden.signer.core.audit_events import SYSTEM
from paywarden.signer.core.explain import KeyGrant, key_grant
from paywarden.signer.core.key_grants import check_grants
from paywarden.signer.store.records import KeyVersion
from paywarden.signer.store.sqlite import SqliteStore
from paywarden.v1 import signer_pb2

from tests.attacks.kit import audit_log
from tests.conftest import make_token
from tests.helpers import MODULE, OPEN_PACK, ROOT, Pki, TestToken, write_config
from tests.support.cli import ctl
from tests.support.clients import Api, running_api
from tests.support.intents import payment_intent
from tests.support.refusals import assert_refused
from tests.support.sessions import open_session

CUSTODY = {"role": "custody", "id": "test"}
# Any P-256 public key will do for the store's rows: the token's own come later.
SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d030107034200"
    "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)


def _key_info(key_id: str) -> PublicKeyInfo:
    return PublicKeyInfo(KeyRef.parse(key_id), SPKI)


@pytest.fixture
def keystore(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    return store


def _key_states(store: SqliteStore) -> dict[str, KeyState]:
    return {k.key_id: k.state for k in store.key_versions()}


class TestStore:
    def test_configured_keys_are_registered_once_and_audited(self, keystore: SqliteStore) -> None:
        done = key_custody.register_configured(
            keystore, [_key_info("payments.v1"), _key_info("payments.v2")], 100, SYSTEM
        )
        assert done.added == ["payments.v1", "payments.v2"]
        again = key_custody.register_configured(keystore, [_key_info("payments.v1")], 200, SYSTEM)
        assert again.added == [] and again.skipped == []
        assert _key_states(keystore) == {
            "payments.v1": KeyState.ACTIVE,
            "payments.v2": KeyState.ACTIVE,
        }
        records = [r for r in audit_log(keystore.path) if r["action"] == "key.register"]
        assert [r["key_id"] for r in records] == ["payments.v1", "payments.v2"]

    def test_rotation_demotes_every_active_version_in_one_transaction(
        self, keystore: SqliteStore
    ) -> None:
        key_custody.register_configured(
            keystore, [_key_info("payments.v1"), _key_info("payments.v2")], 100, SYSTEM
        )
        new, demoted = key_custody.rotate(
            keystore, "payments", lambda r, _profile: _key_info(r.key_id), 150, CUSTODY
        )
        assert new.key_id == "payments.v3" and demoted == ["payments.v1", "payments.v2"]
        assert _key_states(keystore) == {
            "payments.v1": KeyState.VERIFY_ONLY,
            "payments.v2": KeyState.VERIFY_ONLY,
            "payments.v3": KeyState.ACTIVE,
        }
        (record,) = [r for r in audit_log(keystore.path) if r["action"] == "key.rotate"]
        assert record["actor"] == CUSTODY and record["verify_only"] == demoted

    def test_a_rotated_version_is_never_registered_again(self, keystore: SqliteStore) -> None:
        key_custody.register_configured(keystore, [_key_info("payments.v1")], 100, SYSTEM)
        key_custody.rotate(
            keystore, "payments", lambda r, _profile: _key_info(r.key_id), 150, CUSTODY
        )
        # A configuration that names another version of a managed label registers nothing.
        done = key_custody.register_configured(
            keystore, [_key_info("payments.v1"), _key_info("payments.v7")], 200, SYSTEM
        )
        assert done.added == [] and done.skipped == ["payments.v7"]
        assert _key_states(keystore)["payments.v1"] is KeyState.VERIFY_ONLY

    def test_no_state_ever_goes_back_even_in_sql(self, keystore: SqliteStore) -> None:
        key_custody.register_configured(keystore, [_key_info("payments.v1")], 100, SYSTEM)
        key_custody.revoke(keystore, "payments.v1", "leaked", 120, CUSTODY)
        conn = sqlite3.connect(keystore.path)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="earlier state"):
                conn.execute("UPDATE payment_keys SET state = 'active'")
            with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
                conn.execute("DELETE FROM payment_keys")
        finally:
            conn.close()
        with pytest.raises(key_custody.CustodyRefused, match="revoked already"):
            key_custody.revoke(keystore, "payments.v1", "again", 130, CUSTODY)

    def test_destroy_waits_for_the_grace_period(self, keystore: SqliteStore) -> None:
        key_custody.register_configured(keystore, [_key_info("payments.v1")], 100, SYSTEM)
        deleted: list[str] = []

        def delete(ref: KeyRef) -> int:
            deleted.append(ref.key_id)
            return 2

        with pytest.raises(key_custody.CustodyRefused, match="is active"):
            key_custody.destroy(keystore, "payments.v1", 0, delete, 100, CUSTODY)
        key_custody.rotate(
            keystore, "payments", lambda r, _profile: _key_info(r.key_id), 1_000, CUSTODY
        )
        with pytest.raises(key_custody.CustodyRefused, match="grace period of 1 h ends at"):
            key_custody.destroy(keystore, "payments.v1", 3600, delete, 1_000 + 3599, CUSTODY)
        assert deleted == []
        assert (
            key_custody.destroy(keystore, "payments.v1", 3600, delete, 1_000 + 3600, CUSTODY) == 2
        )
        assert deleted == ["payments.v1"]
        assert _key_states(keystore)["payments.v1"] is KeyState.DESTROYED
        (record,) = [r for r in audit_log(keystore.path) if r["action"] == "key.destroy"]
        assert record["previous"] == KeyState.VERIFY_ONLY and record["objects_deleted"] == 2

    def test_the_sign_path_reads_one_row_through_an_index(self, keystore: SqliteStore) -> None:
        conn = sqlite3.connect(keystore.path)
        try:
            plans = [
                " ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
                for sql, args in (
                    ("SELECT state FROM payment_keys WHERE key_id = ?", ("payments.v1",)),
                    (
                        "SELECT key_id FROM payment_keys WHERE label = ? AND state = 'active'"
                        " ORDER BY version DESC LIMIT 1",
                        ("payments",),
                    ),
                )
            ]
        finally:
            conn.close()
        assert "USING INDEX sqlite_autoindex_payment_keys_1" in plans[0]
        assert "USING COVERING INDEX payment_keys_active" in plans[1] or (
            "USING INDEX payment_keys_active" in plans[1]
        )


def _on_token(token: TestToken, *args: str) -> str:
    """Runs python (``-c`` code or a script) in another process against ``token``: the
    security team's tools never share the signer's process (login is per process)."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


class TestHsm:
    def test_a_version_made_by_another_process_is_found_without_a_restart(
        self, token: TestToken
    ) -> None:
        hsm = Hsm(MODULE, token.label, token.pin, [KeyRef("payments", 1)], retry_interval=0)
        hsm.open()
        try:
            with pytest.raises(KeyNotFound):
                hsm.sign_es256("lifecycle-hsm.v1", b"x")
            assert hsm.available  # a key not (yet) on the token leaves the session alone
            _on_token(
                token, "scripts/keys.py", "--label", token.label, "generate",
                "--pin-file", str(token.pin_file), "--key", "lifecycle-hsm.v1",
            )  # fmt: skip
            signature = hsm.sign_es256("lifecycle-hsm.v1", b"payload")
            (info,) = [k for k in hsm.public_keys() if k.key_id == "lifecycle-hsm.v1"]
            info.public_key().verify(
                utils.encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                ),
                b"payload",
                ec.ECDSA(hashes.SHA256()),
            )
            # Forgotten, then destroyed by the custody tool: a reopen does not need it.
            hsm.forget(["lifecycle-hsm.v1"])
            out = _on_token(
                token,
                "-c",
                "import sys; from paywarden.hsm import KeyRef, provision; "
                "print(provision.delete_key(sys.argv[1], sys.argv[2], "
                "open(sys.argv[3]).read().strip(), KeyRef('lifecycle-hsm', 1)))",
                MODULE,
                token.label,
                str(token.pin_file),
            )
            assert out.strip() == "2"
            hsm.close()
            hsm.open()
            assert "lifecycle-hsm.v1" not in hsm.key_ids()
            with pytest.raises(KeyNotFound):
                hsm.sign_es256("lifecycle-hsm.v1", b"x")
        finally:
            hsm.close()

    def test_the_audit_key_is_never_looked_up_as_a_payment_key(self, token: TestToken) -> None:
        hsm = Hsm(
            MODULE,
            token.label,
            token.pin,
            [KeyRef("payments", 1)],
            audit_key=KeyRef("audit", 1),
            retry_interval=0,
        )
        hsm.open()
        try:
            with pytest.raises(KeyNotFound, match="audit key"):
                hsm.sign_es256("audit.v1", b"x")
            hsm.forget(["audit.v1"])
            assert len(hsm.sign_checkpoint(checkpoint_body(1, bytes(32), 1, "audit.v1"))) == 64
        finally:
            hsm.close()


def _keys_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/keys.py COMMAND --config CONFIG ...`` as the security team runs it."""
    command, *rest = args
    return subprocess.run(
        [sys.executable, "scripts/keys.py", command, "--config", str(config), *rest],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _token_listing(token: TestToken) -> str:
    return _on_token(
        token, "scripts/keys.py", "--label", token.label, "list", "--pin-file", str(token.pin_file)
    )


class TestCustodyCommands:
    def test_rotate_revoke_destroy_refusals_and_effects(self, tmp_path: Path, pki: Pki) -> None:
        tok = make_token(tmp_path / "hsm", label="custody")
        config = write_config(tmp_path / "cfg", tok, pki)
        missing = _keys_cli(config, "rotate", "--label", "payments")
        assert missing.returncode == 1 and "no store at" in missing.stderr
        store = SqliteStore(tmp_path / "cfg" / "state.db")
        store.migrate()
        unknown = _keys_cli(config, "rotate", "--label", "payments")
        assert unknown.returncode == 1
        assert "no version of key 'payments' is registered" in unknown.stderr
        key_custody.register_configured(
            store, [_key_info("payments.v1"), _key_info("payments.v2")], 100, SYSTEM
        )
        audit = _keys_cli(config, "rotate", "--label", "audit")
        assert audit.returncode == 1 and "audit key's label" in audit.stderr

        rotated = _keys_cli(config, "rotate", "--label", "payments")
        assert rotated.returncode == 0, rotated.stderr
        assert rotated.stdout.splitlines() == [
            "key payments.v3: generated inside the HSM, active",
            "key payments.v1: verify-only",
            "key payments.v2: verify-only",
        ]
        # The open test pack grants payments.v1 and .v2 by their exact ids.
        assert "pack test-open asset USD grants payments.v1, verify-only now" in rotated.stderr
        listed = _token_listing(tok)
        (v3,) = [ln for ln in listed.splitlines() if ln.startswith("payments.v3\t")]
        assert "extractable=False" in v3 and "never_extractable=True" in v3
        assert "UNSAFE" not in v3

        active = _keys_cli(config, "destroy", "--key", "payments.v3", "--grace-hours", "0")
        assert active.returncode == 1 and "payments.v3 is active" in active.stderr
        revoked = _keys_cli(config, "revoke", "--key", "payments.v1", "--reason", "leaked")
        assert revoked.returncode == 0, revoked.stderr
        assert "payments.v1: revoked at " in revoked.stdout
        early = _keys_cli(config, "destroy", "--key", "payments.v1")
        assert early.returncode == 1
        assert "grace period of 24 h ends at" in early.stderr
        assert "payments.v1\t" in _token_listing(tok)
        gone = _keys_cli(config, "destroy", "--key", "payments.v1", "--grace-hours", "0")
        assert gone.returncode == 0, gone.stderr
        assert "payments.v1: destroyed (2 objects deleted" in gone.stdout
        assert "payments.v1\t" not in _token_listing(tok)
        again = _keys_cli(config, "destroy", "--key", "payments.v1", "--grace-hours", "0")
        assert again.returncode == 1 and "destroyed already" in again.stderr
        assert _key_states(store) == {
            "payments.v1": KeyState.DESTROYED,
            "payments.v2": KeyState.VERIFY_ONLY,
            "payments.v3": KeyState.ACTIVE,
        }
        actions = [r["action"] for r in audit_log(store.path) if r["action"].startswith("key.")]
        assert actions == [
            "key.register", "key.register", "key.rotate", "key.revoke", "key.destroy",
        ]  # fmt: skip
        for text in (rotated, revoked, gone, early):
            assert tok.pin not in text.stdout + text.stderr
        store.close()


# agent-1 is granted the label (its active version), agent-2 the exact version payments.v1.
_LABEL_PACK = OPEN_PACK.replace('agents = ["agent-1", "agent-2"]', 'agents = ["agent-1"]').replace(
    'keys = ["payments.v1", "payments.v2"]', 'keys = ["payments"]'
)
_EXACT_PACK = (
    OPEN_PACK.replace('id = "test-open"', 'id = "test-exact"')
    .replace('agents = ["agent-1", "agent-2"]', 'agents = ["agent-2"]')
    .replace('keys = ["payments.v1", "payments.v2"]', 'keys = ["payments.v1"]')
)
_TASK = "Pay for the datasets of the key rotation drill"


def _pay_with(
    api: Api, session_id: str, key: str, agent: str = "agent-1"
) -> signer_pb2.SignResponse:
    return api.sign(
        payment_intent(session_id, payee="data-inc", amount="1.00", key_id=key), agent=agent
    )


def _pay_refused(api: Api, session_id: str, key: str, agent: str = "agent-1") -> grpc.RpcError:
    return assert_refused(
        api.signer_of(agent).Sign,
        signer_pb2.SignRequest(
            intent=payment_intent(session_id, payee="data-inc", amount="1.00", key_id=key)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "KEY_NOT_ACTIVE",
    )


def _jwks(
    api: Api, shows: Callable[[dict[str, dict[str, object]]], bool]
) -> tuple[dict[str, dict[str, object]], signer_pb2.GetPublicKeysResponse]:
    """The served JWKS (by kid) once it ``shows`` what the test waits for: a change made
    by the custody tools (another process) reaches it within the view's reload period,
    ``limits.freeze_cache_seconds`` (a signature is refused at once: that is asserted
    without waiting)."""
    deadline = time.monotonic() + 30
    while True:
        keys = api.signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=30)
        jwks = {str(k["kid"]): k for k in json.loads(keys.jwks_json)["keys"]}
        if shows(jwks) or time.monotonic() > deadline:
            return jwks, keys
        time.sleep(0.05)


def _verify_jws(token: str, jwks_json: str) -> str:
    """Verifies a JWS with joserfc (an independent JOSE library) against the served
    JWKS; returns the kid it was verified with."""
    obj = jws.deserialize_compact(
        token, KeySet.import_key_set(json.loads(jwks_json)), algorithms=["ES256"]
    )
    return str(obj.headers()["kid"])


def _objects_on_token(token: TestToken, label: str, cka_id: str) -> int:
    """How many objects the token holds with this CKA_LABEL and CKA_ID, read back with
    python-pkcs11 directly in another process."""
    out = _on_token(
        token,
        "-c",
        "import sys, pkcs11\n"
        "from pkcs11 import Attribute\n"
        "tok = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])\n"
        "with tok.open(user_pin=open(sys.argv[3]).read().strip()) as s:\n"
        "    wanted = {Attribute.LABEL: sys.argv[4], Attribute.ID: sys.argv[5].encode()}\n"
        "    found = s.get_objects(wanted)\n"
        "    print(len(list(found)))\n",
        MODULE,
        token.label,
        str(token.pin_file),
        label,
        cka_id,
    )
    return int(out.strip())


class TestRunningSigner:
    def test_rotation_end_to_end(self, tmp_path: Path, pki: Pki) -> None:
        tok = make_token(tmp_path / "hsm", label="rotation")
        config = write_config(
            tmp_path / "cfg", tok, pki, packs={"label.toml": _LABEL_PACK, "exact.toml": _EXACT_PACK}
        )
        with running_api(config, pki) as (srv, api):
            sid = open_session(api.planner, "agent-1", "100.00", task=_TASK, timeout=30)
            sid2 = open_session(api.planner, "agent-2", "100.00", task=_TASK, timeout=30)
            # Before: both configured versions sign; the label names the newest.
            before = _pay_with(api, sid, "payments")
            assert before.key_id == "payments.v2"
            exact = _pay_with(api, sid2, "payments.v1", agent="agent-2")
            assert exact.key_id == "payments.v1"

            rotated = _keys_cli(config, "rotate", "--label", "payments")
            assert rotated.returncode == 0, rotated.stderr
            assert "pack test-exact asset USD grants payments.v1, verify-only now" in rotated.stderr

            # After, without a restart: the label signs with the new version.
            after = _pay_with(api, sid, "payments")
            assert after.key_id == "payments.v3"
            assert _pay_with(api, sid, "payments.v3").key_id == "payments.v3"
            # A key freeze may name the rotated version, and stops the label that names it.
            froze = ctl(srv, pki, "freeze", "key", "payments.v3", "--reason", "drill")
            assert froze.returncode == 0, froze.stderr
            assert_refused(
                api.signer.Sign,
                signer_pb2.SignRequest(
                    intent=payment_intent(sid, payee="data-inc", amount="1.00", key_id="payments")
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "FROZEN",
            )
            thawed = ctl(srv, pki, "unfreeze", "key", "payments.v3", "--reason", "drill over")
            assert thawed.returncode == 0, thawed.stderr
            _pay_refused(api, sid, "payments.v1")
            # The pack that names payments.v1 now grants only a verify-only version.
            _pay_refused(api, sid2, "payments.v1", agent="agent-2")
            refused_label = api.answer(
                payment_intent(sid2, payee="data-inc", amount="1.00", key_id="payments"),
                agent="agent-2",
            )
            assert isinstance(refused_label, grpc.RpcError)
            assert refused_label.code() == grpc.StatusCode.PERMISSION_DENIED  # KEY_NOT_ALLOWED

            jwks, keys = _jwks(api, lambda j: "payments.v3" in j)
            assert {k: v["paywarden_state"] for k, v in jwks.items()} == {
                "payments.v1": "verify-only",
                "payments.v2": "verify-only",
                "payments.v3": "active",
            }
            assert {k.key_id: (k.state, k.revoked_at) for k in keys.keys} == {
                "payments.v1": ("verify-only", 0),
                "payments.v2": ("verify-only", 0),
                "payments.v3": ("active", 0),
            }
            # pyjwt reads the set too: the state members are ignored (RFC 7517 section 4).
            assert {k.key_id for k in jwt.PyJWKSet.from_dict(json.loads(keys.jwks_json)).keys} == {
                "payments.v1",
                "payments.v2",
                "payments.v3",
            }
            # Signed before the rotation, still verified against the JWKS; the new kid after.
            assert _verify_jws(before.jws, keys.jwks_json) == "payments.v2"
            assert _verify_jws(exact.jws, keys.jwks_json) == "payments.v1"
            assert _verify_jws(after.jws, keys.jwks_json) == "payments.v3"

            # Revoked: the next request is refused, the JWKS says when.
            revoked = _keys_cli(config, "revoke", "--key", "payments.v3", "--reason", "drill")
            assert revoked.returncode == 0, revoked.stderr
            _pay_refused(api, sid, "payments")
            _pay_refused(api, sid, "payments.v3")
            jwks, keys = _jwks(api, lambda j: j["payments.v3"]["paywarden_state"] == "revoked")
            v3 = jwks["payments.v3"]
            assert v3["paywarden_state"] == "revoked"
            revoked_at = v3["paywarden_revoked_at"]
            assert (
                isinstance(revoked_at, int)
                and revoked_at >= json.loads(_payload_of(after.jws))["iat"]
            )
            assert {k.key_id: k.state for k in keys.keys}["payments.v3"] == "revoked"
            assert [k.revoked_at for k in keys.keys if k.key_id == "payments.v3"] == [revoked_at]
            assert _verify_jws(after.jws, keys.jwks_json) == "payments.v3"  # still checkable

            # A new rotation signs again, still without a restart.
            assert _keys_cli(config, "rotate", "--label", "payments").returncode == 0
            assert _pay_with(api, sid, "payments").key_id == "payments.v4"

            # Destroyed after its grace period: gone from the token and from the JWKS.
            assert _objects_on_token(tok, "payments", "v1") == 2
            early = _keys_cli(config, "destroy", "--key", "payments.v1")
            assert early.returncode == 1 and "grace period" in early.stderr
            gone = _keys_cli(config, "destroy", "--key", "payments.v1", "--grace-hours", "0")
            assert gone.returncode == 0, gone.stderr
            assert _objects_on_token(tok, "payments", "v1") == 0
            assert _objects_on_token(tok, "payments", "v2") == 2
            jwks, _keys = _jwks(api, lambda j: "payments.v1" not in j)
            assert "payments.v1" not in jwks
            assert jwks["payments.v4"]["paywarden_state"] == "active"
            _pay_refused(api, sid2, "payments.v1", agent="agent-2")
            assert _pay_with(api, sid, "payments").key_id == "payments.v4"
            # A live reload refuses the pack as a restart does (below); nothing changes.
            reload = ctl(srv, pki, "reload")
            assert reload.returncode == 1
            assert "pack test-exact asset BTC grants key payments.v1, which is destroyed" in (
                reload.stderr
            )

        # A restart: the pack that grants the destroyed version no longer loads ...
        start = subprocess.run(
            [sys.executable, "-m", "paywarden.signer.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert start.returncode == 2
        assert (
            "pack test-exact asset BTC grants key payments.v1, which is destroyed" in start.stderr
        )
        # ... granted by label it does, and the configured payments.v1, gone from the
        # token, is not needed to open it.
        (tmp_path / "cfg" / "policy" / "exact.toml").write_text(
            _EXACT_PACK.replace('keys = ["payments.v1"]', 'keys = ["payments"]'), encoding="utf-8"
        )
        with running_api(config, pki) as (srv, api):
            assert "hsm available: True" in srv.output[-1]
            sid2 = open_session(api.planner, "agent-2", "10.00", task=_TASK, timeout=30)
            assert _pay_with(api, sid2, "payments", agent="agent-2").key_id == "payments.v4"

        records = audit_log(tmp_path / "cfg" / "state.db")
        changes = [
            (r["action"], r.get("key_id")) for r in records if r["action"].startswith("key.")
        ]
        assert changes == [
            ("key.register", "payments.v1"),
            ("key.register", "payments.v2"),
            ("key.rotate", "payments.v3"),
            ("key.revoke", "payments.v3"),
            ("key.rotate", "payments.v4"),
            ("key.destroy", "payments.v1"),
        ]
        # Repeats of one refusal are counted into a summary: the first of each is in full.
        said = [
            (r["actor"]["id"], r["message"])
            for r in records
            if r["action"] == "sign.refused" and r["reason"] == "KEY_NOT_ACTIVE"
        ]
        assert said[:2] == [
            ("agent-1", "key payments.v1 is verify-only; it signs nothing"),
            ("agent-2", "key payments.v1 is verify-only; it signs nothing"),
        ]


def _payload_of(token: str) -> str:
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


class TestScoping:
    def test_a_pack_may_grant_only_active_keys(self, tmp_path: Path) -> None:
        def version(key_id: str, state: KeyState) -> KeyVersion:
            ref = KeyRef.parse(key_id)
            return KeyVersion(key_id, ref.label, ref.version, state, SPKI, 1, 1, 1)

        stored = [
            version("payments.v1", KeyState.VERIFY_ONLY),
            version("payments.v2", KeyState.ACTIVE),
            version("refunds.v1", KeyState.REVOKED),
        ]
        configured = ["payments.v1", "payments.v2", "eu.v1"]

        def grants(*keys: str) -> None:
            path = tmp_path / "p.toml"
            path.write_text(
                OPEN_PACK.replace(
                    '"payments.v1", "payments.v2"', ", ".join(f'"{k}"' for k in keys)
                ),
                encoding="utf-8",
            )
            check_grants([load_pack(path)], stored, configured)

        grants("payments", "payments.v2")
        grants("eu.v1", "eu")  # configured, its token not up yet: registered when it is
        for keys, why in (
            (("payments.v1",), "grants key payments.v1, which is verify-only"),
            (("payments.v9",), "grants key payments.v9, which is not a payment key"),
            (("refunds",), "grants key refunds, which has no active version"),
            (("refunds.v1",), "grants key refunds.v1, which is revoked"),
            (("other",), "grants key other, which is not a payment key label"),
        ):
            with pytest.raises(PackError, match=f"pack test-open asset BTC {why}"):
                grants(*keys)

    def test_explain_names_each_grants_state(self) -> None:
        def version(key_id: str, state: KeyState) -> KeyVersion:
            ref = KeyRef.parse(key_id)
            return KeyVersion(key_id, ref.label, ref.version, state, SPKI, 1, 1, 1)

        stored = [
            version("payments.v1", KeyState.VERIFY_ONLY),
            version("payments.v2", KeyState.ACTIVE),
            version("refunds.v1", KeyState.REVOKED),
        ]
        configured = ["payments.v1", "eu.v1"]
        assert [
            key_grant(k, configured, stored)
            for k in ("payments.v1", "payments", "refunds", "eu.v1", "eu", "other.v1")
        ] == [
            KeyGrant("payments.v1", True, "verify-only"),
            KeyGrant("payments", True, "active"),
            KeyGrant("refunds", True, "no active version"),
            KeyGrant("eu.v1", True, None),
            KeyGrant("eu", True, None),
            KeyGrant("other.v1", False, None),
        ]
