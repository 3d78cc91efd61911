"""The SDK's parts that need no signer: connection settings from arguments or the
environment, the nonce, the retry policy's bounds and the decoding of a refusal."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from paywarden.client import ConnectionSettings, RetryPolicy, SettingsError, new_nonce
from paywarden.client._calls import refusal_of
from paywarden.client._signing import build_intent, read_answer
from paywarden.client.errors import UnexpectedAnswer
from paywarden.v1 import signer_pb2

from tests.helpers import Pki

ENV = {
    "PAYWARDEN_ADDR": "signer.example:50051",
    "PAYWARDEN_CA": "/etc/pw/ca.crt",
    "PAYWARDEN_CERT": "/etc/pw/agent.crt",
    "PAYWARDEN_KEY": "/etc/pw/agent.key",
}


def test_settings_come_from_the_environment() -> None:
    settings = ConnectionSettings.from_env({**ENV, "PAYWARDEN_SERVER_NAME": "localhost"})
    assert settings == ConnectionSettings(
        addr="signer.example:50051",
        ca=Path("/etc/pw/ca.crt"),
        cert=Path("/etc/pw/agent.crt"),
        key=Path("/etc/pw/agent.key"),
        server_name="localhost",
    )
    assert settings.options() == [("grpc.ssl_target_name_override", "localhost")]


def test_an_argument_wins_over_its_variable() -> None:
    settings = ConnectionSettings.from_env(ENV, addr="127.0.0.1:9", key="/tmp/k.pem")
    assert (settings.addr, settings.key, settings.cert) == (
        "127.0.0.1:9", Path("/tmp/k.pem"), Path("/etc/pw/agent.crt"),
    )  # fmt: skip
    assert settings.server_name is None and settings.options() == []


def test_every_missing_setting_is_named() -> None:
    with pytest.raises(SettingsError) as missing:
        ConnectionSettings.from_env({"PAYWARDEN_ADDR": "x:1", "PAYWARDEN_CA": ""})
    assert "PAYWARDEN_CA, PAYWARDEN_CERT, PAYWARDEN_KEY" in str(missing.value)


def test_an_unreadable_or_empty_file_is_named(tmp_path: Path, pki: Pki) -> None:
    base = ConnectionSettings(
        addr="127.0.0.1:1",
        ca=pki.dir / "ca.crt",
        cert=pki.dir / "agent-agent-1.crt",
        key=tmp_path / "missing.key",
    )
    with pytest.raises(SettingsError, match=r"client key .*missing\.key: No such file"):
        base.channel()
    empty = tmp_path / "empty.crt"
    empty.write_text("")
    with pytest.raises(SettingsError, match=r"CA certificate .*empty\.crt is empty"):
        ConnectionSettings(addr="x:1", ca=empty, cert=base.cert, key=base.cert).read()
    secret = (pki.dir / "agent-agent-1.key").read_bytes()
    readable = ConnectionSettings(
        addr="x:1", ca=base.ca, cert=base.cert, key=pki.dir / "agent-agent-1.key"
    )
    assert secret.decode() not in repr(readable.read())


def test_a_nonce_is_random_base64url_without_padding() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    for nonce in nonces:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        assert len(raw) == 32 and "=" not in nonce
    assert len(base64.urlsafe_b64decode(new_nonce(16) + "==")) == 16
    with pytest.raises(ValueError):
        new_nonce(15)
    with pytest.raises(ValueError):
        new_nonce(65)


class Ticks:
    """A monotonic clock the test moves (time is an input of the policy)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_unavailable_and_deadline_are_retried() -> None:
    attempts = RetryPolicy().attempts(clock=Ticks(), jitter=lambda: 0.0)
    attempts.start()
    for code in grpc.StatusCode:
        delay = attempts.retry_after(code)
        retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert (delay is not None) == retryable, code


def test_backoff_grows_and_attempts_are_bounded() -> None:
    ticks = Ticks()
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, multiplier=2, max_backoff=0.3)
    attempts = policy.attempts(clock=ticks, jitter=lambda: 1.0)
    delays = []
    for _ in range(4):
        attempts.start()
        delays.append(attempts.retry_after(grpc.StatusCode.UNAVAILABLE))
    assert delays == [0.1, 0.2, 0.3, None]  # capped, then no fifth attempt


def test_the_overall_deadline_bounds_every_attempt_and_the_retries() -> None:
    ticks = Ticks()
    policy = RetryPolicy(max_attempts=100, deadline=5.0, attempt_timeout=2.0, initial_backoff=1)
    attempts = policy.attempts(clock=ticks, jitter=lambda: 1.0)
    assert attempts.start() == 2.0
    ticks.now += 3.5
    assert attempts.start() == pytest.approx(1.5)  # what is left, not attempt_timeout
    assert attempts.retry_after(grpc.StatusCode.DEADLINE_EXCEEDED) is None  # 2 s > 1.5 s left


def test_an_approval_wait_ends_on_time() -> None:
    ticks = Ticks()
    polls = RetryPolicy(approval_poll=1.0, max_approval_poll=2.0).approval_wait(4.0, ticks)
    seen = []
    while (delay := polls.next_delay()) is not None:
        seen.append(delay)
        ticks.now += delay
    assert seen == [1.0, 1.5, 1.5]  # the last one cut to what was left
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class FailedCall(grpc.RpcError):
    """A failed call as gRPC hands it to the SDK: status, details and trailing metadata."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._metadata = metadata

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return "[BUDGET_EXCEEDED] over budget"

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return self._metadata


def test_a_refusal_is_read_from_the_error_info_alone() -> None:
    info = error_details_pb2.ErrorInfo(reason="BUDGET_EXCEEDED", domain="paywarden.dev")
    info.metadata["decision_id"] = "dec_1"
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, details=[detail])
    refusal = refusal_of(FailedCall((("grpc-status-details-bin", status.SerializeToString()),)))
    assert (refusal.reason, refusal.decision_id, refusal.domain) == (
        "BUDGET_EXCEEDED", "dec_1", "paywarden.dev",
    )  # fmt: skip
    bare = refusal_of(
        FailedCall((("paywarden-audit-seq", "41"), ("grpc-status-details-bin", b"\xff")))
    )
    assert (bare.reason, bare.audit_seq, bare.domain) == (None, 41, None)


def test_an_answer_that_is_not_this_requests_signature_is_not_taken() -> None:
    intent = build_intent("ses_1", {"payee": "acme", "amount": "1.00", "reference": "r"})
    assert intent.nonce and intent.key_id == "payments" and intent.asset == "USD"
    payload = (
        b'{"amount":"1.00","asset":"USD","exp":2,"iat":1,"jti":"dec_1","nonce":"other",'
        b'"payee":"acme","ref":"r","sid":"ses_1","sub":"agent-1","task":"t","typ":"x"}'
    )
    for response, why in [
        (signer_pb2.SignResponse(), "not a signature"),
        (signer_pb2.SignResponse(status=signer_pb2.SIGNED, jws="a.b"), "not a signature"),
        (
            signer_pb2.SignResponse(status=signer_pb2.SIGNED, jws="a.b.c", canonical_payload=b"[]"),
            "cannot be read",
        ),
        (
            signer_pb2.SignResponse(
                status=signer_pb2.SIGNED, jws="a.b.c", canonical_payload=payload
            ),
            "not this request's",
        ),
    ]:
        with pytest.raises(UnexpectedAnswer, match=why):
            read_answer(response, intent, 1, None)
    with pytest.raises(TypeError, match="decimal string"):
        build_intent("ses_1", {"payee": "acme", "amount": 1.0, "reference": "r"})  # type: ignore[typeddict-item]
