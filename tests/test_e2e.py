"""End to end against the real ``paywarden serve`` process over mutual TLS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from functools import partial
from pathlib import Path

import grpc
import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.conftest import make_token
from tests.helpers import (
    Pki,
    TestToken,
    b64url_decode,
    new_nonce,
    reason_of,
    serve,
    trailing_metadata,
    write_config,
)
from tests.support.backends import Stores
from tests.support.cli import paywarden
from tests.support.clients import running_api
from tests.support.intents import payment_intent
from tests.support.sessions import open_session, spent

# The tests that keep state run on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

TASK = "Buy the 2026 weather dataset for the forecasting task"
# What this module's agent pays for: the amount and nonce are said at each call.
forecast_intent = partial(
    payment_intent,
    payee="weather-data-inc",
    reference="inv-2026-001",
    purpose="dataset for the forecast",
    expires_in=120,
)


def test_open_sign_verify_with_independent_libraries(config_path: Path, pki: Pki) -> None:
    with running_api(config_path, pki) as (srv, api):
        session_id = open_session(api.planner, "agent-1", "100.00", task=TASK, ttl=600, timeout=30)
        resp = api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="12.5"))
        with pki.channel(srv.addr, "agent", "agent-1") as ch:
            keys = signer_pb2_grpc.SignerStub(ch).GetPublicKeys(
                signer_pb2.GetPublicKeysRequest(), timeout=30
            )

    # 1. an independent JOSE library verifies the JWS with the served JWKS
    key_set = KeySet.import_key_set(json.loads(keys.jwks_json))
    token = jws.deserialize_compact(resp.jws, key_set, algorithms=["ES256"])
    assert token.headers()["kid"] == "payments.v1" == resp.key_id
    assert token.headers()["alg"] == "ES256"
    assert token.payload == resp.canonical_payload

    # 2. cryptography verifies the canonical bytes against the SPKI key
    header_b64, payload_b64, sig_b64 = resp.jws.split(".")
    raw = b64url_decode(sig_b64)
    assert len(raw) == 64
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    spki = {k.key_id: k.spki_pem for k in keys.keys}["payments.v1"]
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    public = load_pem_public_key(spki.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, f"{header_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    assert b64url_decode(payload_b64) == resp.canonical_payload
    with pytest.raises(InvalidSignature):
        tampered = resp.canonical_payload.replace(b"12.50", b"92.50")
        signing_input = f"{header_b64}.{base64.urlsafe_b64encode(tampered).rstrip(b'=').decode()}"
        public.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))

    # 3. the payload is RFC 8785: an independent implementation gives the same bytes
    claims = json.loads(resp.canonical_payload)
    assert rfc8785.dumps(claims) == resp.canonical_payload
    assert claims["typ"] == "paywarden.payment.v1"
    assert claims["sid"] == session_id
    assert claims["sub"] == "agent-1"
    assert claims["task"] == hashlib.sha256(TASK.encode()).hexdigest()
    assert claims["amount"] == "12.50"
    assert claims["jti"] == resp.decision_id
    assert set(claims) == {
        "typ", "sid", "task", "sub", "payee", "amount", "asset", "ref", "nonce", "iat", "exp", "jti"
    }  # fmt: skip


def test_nonce_replayed_after_restart(config_path: Path, pki: Pki) -> None:
    nonce = new_nonce()
    with running_api(config_path, pki) as (_, api):
        session_id = open_session(api.planner, "agent-1", "100.00", task=TASK, ttl=600, timeout=30)
        req = forecast_intent(session_id, nonce=nonce, amount="12.5")
        first = api.sign(req)
    with running_api(config_path, pki) as (_, api):
        # the same request: the same answer, spent once
        again = api.sign(req)
        assert (again.jws, again.decision_id) == (first.jws, first.decision_id)
        assert again.replayed_result
        assert spent(api.planner, session_id, timeout=30) == {"USD": "12.50"}
        # the same nonce with another amount: a replay
        changed = forecast_intent(session_id, nonce=nonce, amount="1.00")
        changed.expires_at = req.expires_at
        with pytest.raises(grpc.RpcError) as err:
            api.sign(changed)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert reason_of(err.value) == "NONCE_REPLAYED"
        assert spent(api.planner, session_id, timeout=30) == {"USD": "12.50"}


def test_health_and_reflection_are_served(config_path: Path, pki: Pki) -> None:
    reflection_on = {"PAYWARDEN_SERVER__REFLECTION": "true"}  # off by default
    with (
        serve(config_path, env=reflection_on) as srv,
        pki.channel(srv.addr, "operator", "operator-1") as ch,
    ):
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "paywarden.v1.Signer", "paywarden.v1.Sessions"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"paywarden.v1.Signer", "paywarden.v1.Sessions", "grpc.health.v1.Health"} <= names
    # SIGTERM (sent by serve()'s exit) drains and stops cleanly
    assert srv.proc.returncode == 0
    assert any("paywarden: stopping" in line for line in srv.output)


def test_hsm_unavailable_fails_closed_and_recovers(
    tmp_path: Path, pki: Pki, stores: Stores
) -> None:
    # A token of this test's own: its directory is moved away under the server.
    tok: TestToken = make_token(tmp_path / "hsm", label="unavailable")
    config = write_config(tmp_path / "cfg", tok, pki, stores=stores)
    tokens = tok.base / "tokens"
    with running_api(config, pki) as (srv, api):
        session_id = open_session(api.planner, "agent-1", "50.00", task=TASK, ttl=600, timeout=30)
        assert api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="1.00")).jws
        away = tok.base / "tokens.away"
        shutil.move(tokens, away)
        tokens.mkdir()
        # The first request is decided and recorded, then the HSM fails: no
        # signature, the amount stays reserved, and the answer names the decision.
        pending = forecast_intent(session_id, nonce=new_nonce(), amount="1.00")
        with pytest.raises(grpc.RpcError) as err:
            api.sign(pending)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(err.value) == "HSM_UNAVAILABLE"
        metadata = trailing_metadata(err.value)
        decision_id = metadata["paywarden-decision-id"]
        # While the HSM stays down, requests are refused before anything is recorded.
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="1.00"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason_of(err.value) == "HSM_UNAVAILABLE"
            assert "paywarden-decision-id" not in trailing_metadata(err.value)
        assert spent(api.planner, session_id, timeout=30) == {"USD": "2.00"}
        # the service keeps serving everything that does not need the HSM
        with pki.channel(srv.addr, "agent", "agent-1") as ch:
            jwks = signer_pb2_grpc.SignerStub(ch).GetPublicKeys(
                signer_pb2.GetPublicKeysRequest(), timeout=30
            )
        assert json.loads(jwks.jwks_json)["keys"]
        shutil.rmtree(tokens)
        shutil.move(away, tokens)
        # the retry of the recorded request completes it, exactly once
        done = api.sign(pending)
        assert done.decision_id == decision_id
        assert done.replayed_result
        assert spent(api.planner, session_id, timeout=30) == {"USD": "2.00"}
        resp = api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="2.00"))
        assert resp.jws.count(".") == 2
        assert spent(api.planner, session_id, timeout=30) == {"USD": "4.00"}


def test_serve_refuses_a_bad_config_naming_the_setting(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    bad = write_config(tmp_path, token, pki, extra="\n[limits2]\nx = 1\n")
    proc = paywarden("serve", "--config", bad, timeout=60)
    assert proc.returncode == 2
    assert "limits2" in proc.stderr
    assert token.pin not in proc.stderr + proc.stdout


def test_recorded_unsigned_payment_is_not_signed_after_its_session_closed(
    tmp_path: Path, pki: Pki, stores: Stores
) -> None:
    """The HSM failed after the decision was recorded; the planner then closed the
    session. The retry must be refused and the reservation released, not signed."""
    tok: TestToken = make_token(tmp_path / "hsm", label="closed-retry")
    config = write_config(tmp_path / "cfg", tok, pki, stores=stores)
    tokens = tok.base / "tokens"
    with running_api(config, pki) as (srv, api):
        session_id = open_session(api.planner, "agent-1", "50.00", task=TASK, ttl=600, timeout=30)
        assert api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="1.00")).jws
        shutil.move(tokens, tok.base / "tokens.away")
        tokens.mkdir()
        pending = forecast_intent(session_id, nonce=new_nonce(), amount="5.00")
        with pytest.raises(grpc.RpcError) as err:
            api.sign(pending)
        assert reason_of(err.value) == "HSM_UNAVAILABLE"
        assert spent(api.planner, session_id, timeout=30) == {"USD": "6.00"}
        with pki.channel(srv.addr, "planner", "planner-1") as ch:
            sessions_pb2_grpc.SessionsStub(ch).CloseSession(
                sessions_pb2.CloseSessionRequest(session_id=session_id), timeout=30
            )
        shutil.rmtree(tokens)
        shutil.move(tok.base / "tokens.away", tokens)
        with pytest.raises(grpc.RpcError) as err:
            api.sign(pending)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(err.value) == "SESSION_CLOSED"
        # the reservation of the never-signed payment is released; a second retry agrees
        assert spent(api.planner, session_id, timeout=30) == {"USD": "1.00"}
        with pytest.raises(grpc.RpcError) as err:
            api.sign(pending)
        assert reason_of(err.value) == "SESSION_CLOSED"


@pytest.mark.parametrize(
    ("setting", "make_bad", "expected"),
    [
        ("TLS_CERT", lambda pki, bad: bad.write_text("not a certificate"), "server.tls_cert"),
        ("CLIENT_CA", lambda pki, bad: bad.write_text("not a CA"), "server.client_ca"),
        ("TLS_KEY", lambda pki, bad: bad.write_bytes(pki.cert("agent", "agent-1")[0]),
         "server.tls_key: the key does not match"),
    ],
    ids=["cert", "ca", "key-mismatch"],
)  # fmt: skip
def test_serve_names_bad_tls_material(
    tmp_path: Path,
    token: TestToken,
    pki: Pki,
    setting: str,
    make_bad: object,
    expected: str,
) -> None:
    config = write_config(tmp_path, token, pki)
    bad = tmp_path / "bad.pem"
    make_bad(pki, bad)  # type: ignore[operator]
    proc = paywarden(
        "serve",
        "--config",
        config,
        env={**os.environ, f"PAYWARDEN_SERVER__{setting}": str(bad)},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr


def test_logs_are_json_lines_with_decision_ids_and_no_secrets(
    config_path: Path, pki: Pki, token: TestToken, stores: Stores
) -> None:
    with running_api(config_path, pki) as (srv, api):
        session_id = open_session(api.planner, "agent-1", "100.00", task=TASK, ttl=600, timeout=30)
        resp = api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="12.5"))
        with pytest.raises(grpc.RpcError):
            api.sign(forecast_intent(session_id, nonce=new_nonce(), amount="-1"))
    logs = [line for line in srv.output if line.startswith("{")]
    assert logs, srv.output
    parsed = [json.loads(line) for line in logs]
    assert {"ts", "level", "logger", "msg"} <= set(parsed[0])
    assert any(p.get("decision_id") == resp.decision_id for p in parsed)
    everything = "".join(srv.output)
    assert token.pin not in everything
    assert token.so_pin_file.read_text().strip() not in everything
    assert "PRIVATE KEY" not in everything
    if stores.password is not None:  # PostgreSQL's
        assert stores.password not in everything
