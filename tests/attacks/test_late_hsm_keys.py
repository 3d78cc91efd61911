"""Attack surface: payments signed with keys the audit log never fingerprinted.

When the token was unavailable at start-up, the only ``keys.load`` record
listed no keys, and payments signed after the token came back had no audited
key fingerprint: a token swapped while the signer ran would have left no
trace. Now every (re)open of the token writes a ``keys.load`` record with each
key's SPKI SHA-256, before anything is signed in the new session. The test
runs a real ``paywarden serve`` whose token directory is missing at start.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from paywarden.hsm import Hsm, HsmUnavailable, KeyRef, PublicKeyInfo
from paywarden.v1 import signer_pb2

from tests.attacks.kit import audit_log
from tests.conftest import make_token
from tests.helpers import MODULE, Pki, TestToken, new_nonce, write_config
from tests.support.clients import running_api
from tests.support.sessions import open_session
from tests.test_e2e import TASK, forecast_intent


def _spki_sha256(pem: str) -> str:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def test_keys_are_audited_when_the_token_comes_up_after_start(tmp_path: Path, pki: Pki) -> None:
    tok = make_token(tmp_path / "hsm", label="late")
    config = write_config(tmp_path / "cfg", tok, pki)
    tokens, away = tok.base / "tokens", tok.base / "tokens.away"
    shutil.move(tokens, away)  # the token directory is missing at start
    with running_api(config, pki) as (srv, api):
        assert "hsm available: False" in srv.output[-1]
        session_id = open_session(api.planner, "agent-1", "50.00", task=TASK, ttl=600, timeout=30)
        shutil.move(away, tokens)  # the token comes up
        signed = api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="1.00"))
        published = api.signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=30)
    records = audit_log(tmp_path / "cfg" / "state.db")
    loads = [(seq, r) for seq, r in enumerate(records, start=1) if r["action"] == "keys.load"]
    assert loads[0][1]["keys"] == [] and loads[0][1]["hsm_available"] is False
    audited = [(seq, r) for seq, r in loads if r["keys"]]
    assert audited, "no keys.load record lists the keys after the token came up"
    first_seq, first = audited[0]
    assert {k["key_id"]: k["spki_sha256"] for k in first["keys"]} == {
        k.key_id: _spki_sha256(k.spki_pem) for k in published.keys
    }
    (decision_seq,) = [
        seq
        for seq, r in enumerate(records, start=1)
        if r["action"] == "sign.decision" and r["decision"]["id"] == signed.decision_id
    ]
    # the fingerprint was on record before the payment was decided (and so signed)
    assert first_seq < decision_seq
    assert signed.key_id in {k["key_id"] for k in first["keys"]}


def test_a_token_whose_keys_cannot_be_audited_signs_nothing(token: TestToken) -> None:
    """The audit write fails (a fault the real store cannot produce on demand):
    the reopened session is dropped and nothing is signed until it succeeds."""
    hsm = Hsm(MODULE, token.label, token.pin, [KeyRef("payments", 1)], retry_interval=0)
    hsm.open()
    events: list[str] = []

    def cannot_record(keys: list[PublicKeyInfo]) -> None:
        events.append("refused")
        raise HsmUnavailable("cannot record the token's keys in the audit log")

    def record(keys: list[PublicKeyInfo]) -> None:
        events.append("recorded " + ",".join(k.key_id for k in keys))

    try:
        hsm.on_open(cannot_record)
        hsm.close()  # as after a fault: the next use reopens
        with pytest.raises(HsmUnavailable, match="audit log"):
            hsm.sign_es256("payments.v1", b"payload")
        assert not hsm.available
        hsm.on_open(record)
        assert len(hsm.sign_es256("payments.v1", b"payload")) == 64
        assert events == ["refused", "recorded payments.v1"]
    finally:
        hsm.close()
