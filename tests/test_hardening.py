"""Fixes from the review of the audit log, kill switch and metrics, each shown once."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from paywarden.signer.auditlog import merkle, verification
from paywarden.signer.auditlog.checkpoints import checkpoint_body
from paywarden.signer.config_file import ConfigError, load_config
from paywarden.signer.core.payments import IntentFields
from paywarden.signer.core.withdrawal import close_session
from paywarden.signer.encoding import jcs
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import Checkpoint, SessionRecord, StoreError
from paywarden.signer.store.sqlite import SqliteStore

from tests.helpers import Stack

AGENT = Principal(Role.AGENT, "agent-1")
OPERATOR = Principal(Role.OPERATOR, "operator-1")
EVENT = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}


def test_a_refusal_with_a_huge_expiry_is_audited_not_internal(stack: Stack) -> None:
    fields = IntentFields(
        session_id="ses_" + "D" * 43, key_id="payments.v1", payee="acme", amount="1.00",
        asset="USD", reference="r", purpose="p", nonce="A" * 22, expires_at=2**63 - 1,
    )  # fmt: skip
    with pytest.raises(InvalidInput) as err:
        stack.service.sign(AGENT, fields)
    assert err.value.reason is Reason.EXPIRY_TOO_FAR
    assert err.value.audit_seq is not None
    record = json.loads(stack.store.audit_record(err.value.audit_seq))
    assert record["action"] == "sign.refused"
    assert record["untrusted"]["request"]["expires_at"] == str(2**63 - 1)


def test_a_freeze_names_a_configured_key(stack: Stack) -> None:
    with pytest.raises(InvalidInput) as err:
        stack.control.freeze(OPERATOR, "key", "payment.v1", "typo")
    assert err.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(InvalidInput):
        stack.control.freeze(OPERATOR, "key", "audit.v1", "not a payment key")


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "10.0.0.1:9464", "example.com:9464", "abc"])
def test_metrics_listen_must_be_loopback(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        load_config(None, {"PAYWARDEN_METRICS__LISTEN": f'"{listen}"'})
    assert load_config(None, {"PAYWARDEN_METRICS__LISTEN": '"127.0.0.1:0"'}).metrics.listen


def test_closing_a_closed_session_writes_no_record(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    sid = "ses_" + "E" * 43
    store.create_session(
        SessionRecord(sid, "agent-1", "planner-1", "0" * 64, 1, 2**40, None, {"USD": 1}, {}),
        {"USD": 2},
        EVENT,
    )
    close_session(store, sid, 2, EVENT)
    size, _ = store.audit_head()
    close_session(store, sid, 3, EVENT)
    assert store.audit_head()[0] == size
    store.close()


def test_the_health_probe_sees_a_store_another_writer_holds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store.check()
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError):
            store.check()
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.check()
    store.close()


def _signed(body: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    r, s = utils.decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_verify_accepts_checkpoints_signed_before_and_after_a_key_rotation() -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    records: list[tuple[int, str, bytes | None]] = []
    frontier: merkle.Frontier = []
    checkpoints = []
    for seq in range(1, 7):
        prev = merkle.frontier_root(frontier).hex()
        body = jcs({"seq": seq, "prev_root": prev, "n": seq, "time": 100 + seq})
        records.append((seq, body.decode(), None))
        frontier = merkle.frontier_append(frontier, merkle.leaf_hash(body))
        if seq in (3, 6):
            key, kid = (old, "audit.v1") if seq == 3 else (new, "audit.v2")
            root = merkle.frontier_root(frontier)
            cp_body = checkpoint_body(seq, root, 100 + seq, kid)
            checkpoints.append(
                Checkpoint(seq, root.hex(), 100 + seq, kid, cp_body.decode(), _signed(cp_body, key))
            )
    both = [old.public_key(), new.public_key()]
    assert verification.verify(records, checkpoints, both).ok
    only_new = verification.verify(records, checkpoints, [new.public_key()])
    assert not only_new.ok and "checkpoint 3: bad signature" in only_new.problems[0]
