"""Revoking a client identity (issue 12, point 3): by principal id or by certificate serial.

Against the real ``paywarden serve`` (SoftHSM2 token, SQLite store, gRPC over mutual TLS):
the revoked identity's next call is refused PERMISSION_DENIED with ``IDENTITY_REVOKED``,
without a restart, after a restart on the same store and on a second signer sharing the
store; other identities, and a new certificate of a principal whose old serial was
revoked, are not. Only operators may revoke; bad requests are INVALID_ARGUMENT. Every
revocation is one audit record, and the log still verifies.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from paywarden.signer.core import audit_events
from paywarden.signer.core.revocations import RevocationView
from paywarden.signer.errors import Forbidden, Reason, Unavailable
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import Revocation, RevocationKind
from paywarden.signer.store.sqlite import SqliteStore
from paywarden.v1 import control_pb2, control_pb2_grpc, sessions_pb2

from tests.attacks.kit import audit_log
from tests.helpers import Pki, ServeProcess, TestToken, reason_of, write_config
from tests.support.cli import audit_verify, ctl, pki_script
from tests.support.clients import Api, api_at, running_api
from tests.support.intents import payment_request
from tests.support.refusals import assert_refused
from tests.support.sessions import open_session

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
REVOKED = Reason.IDENTITY_REVOKED.value
OPERATOR = "operator-1"
TIMEOUT = 30


def _serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


def _colons(serial: int) -> str:
    """A serial as openssl prints it: upper-case octets joined by colons."""
    raw = serial.to_bytes((serial.bit_length() + 7) // 8, "big")
    return ":".join(f"{b:02X}" for b in raw)


@pytest.fixture
def reissued(pki: Pki, pki_copy: Pki) -> Pki:
    """A copy of the run's PKI (same CA) in which agent-2 has a new certificate: the
    same principal under another serial."""
    for suffix in (".crt", ".key"):  # the script keeps a certificate that exists
        (pki_copy.dir / f"agent-agent-2{suffix}").unlink()
    proc = pki_script("issue", "--dir", pki_copy.dir, "--role", "agent", "--id", "agent-2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new, old = pki_copy.cert("agent", "agent-2")[1], pki.cert("agent", "agent-2")[1]
    assert _serial(new) != _serial(old)
    return pki_copy


def _sign_one_dollar(api: Api, agent: str, session_id: str) -> object:
    return api.signer_of(agent).Sign(
        payment_request(session_id, payee="acme-data", amount="1.00"), timeout=TIMEOUT
    )


def _revoke(api: Api, **fields: str) -> control_pb2.RevokeIdentityResponse:
    resp: control_pb2.RevokeIdentityResponse = api.control().RevokeIdentity(
        control_pb2.RevokeIdentityRequest(**fields), timeout=TIMEOUT
    )
    return resp


@pytest.fixture
def served_config(tmp_path: Path, token: TestToken, pki: Pki) -> Path:
    return write_config(tmp_path, token, pki)


@pytest.fixture
def served(served_config: Path, pki: Pki) -> Iterator[tuple[ServeProcess, Api]]:
    with running_api(served_config, pki) as (srv, api):
        yield srv, api


# -- by id and by serial, across a restart -------------------------------------------------


def test_revoked_identities_are_refused_at_once_and_after_a_restart(
    served_config: Path, pki: Pki, reissued: Pki
) -> None:
    config = served_config
    old_serial = _serial(pki.cert("agent", "agent-2")[1])
    with running_api(config, pki) as (srv, api), api_at(srv.addr, reissued) as new:
        s1 = open_session(api.planner, "agent-1", "100.00", timeout=TIMEOUT)
        s2 = open_session(api.planner, "agent-2", "100.00", timeout=TIMEOUT)
        _sign_one_dollar(api, "agent-1", s1)  # both sign before any revocation
        _sign_one_dollar(api, "agent-2", s2)

        out = ctl(srv, pki, "revoke", "--principal", "agent-1", "--reason", "key leaked")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == "principal agent-1: revoked (key leaked)"
        assert_refused(api.signer_of("agent-1").Sign, payment_request(s1, payee="acme-data",
                       amount="1.00"), DENIED, REVOKED)  # fmt: skip
        _sign_one_dollar(api, "agent-2", s2)  # another agent is not touched

        resp = _revoke(api, cert_serial=_colons(old_serial), reason="laptop stolen")
        assert resp.created and resp.revocation.cert_serial == format(old_serial, "x")
        assert resp.revocation.operator == f"operator/{OPERATOR}"
        assert_refused(api.signer_of("agent-2").Sign, payment_request(s2, payee="acme-data",
                       amount="1.00"), DENIED, REVOKED)  # fmt: skip
        # the same principal with a new certificate (another serial) still signs
        _sign_one_dollar(new, "agent-2", s2)
        # so does a planner, and a second revocation of one identity changes nothing
        open_session(api.planner, "agent-2", "1.00", timeout=TIMEOUT)
        again = _revoke(api, principal_id="agent-1", reason="twice")
        assert not again.created and again.revocation.reason == "key leaked"

        out = ctl(srv, pki, "revoke", "--principal", "planner-2", "--reason", "left the team")
        assert out.returncode == 0, out.stdout + out.stderr
        assert_refused(
            api.sessions("planner", "planner-2").OpenSession,
            sessions_pb2.OpenSessionRequest(),  # refused before the request is read
            DENIED,
            REVOKED,
        )

    with running_api(config, pki) as (srv, api), api_at(srv.addr, reissued) as new:
        for agent, sid in (("agent-1", s1), ("agent-2", s2)):
            assert_refused(api.signer_of(agent).Sign, payment_request(sid, payee="acme-data",
                           amount="1.00"), DENIED, REVOKED)  # fmt: skip
        err = assert_refused(
            api.sessions("planner", "planner-2").OpenSession,
            sessions_pb2.OpenSessionRequest(),
            DENIED,
            REVOKED,
        )
        assert "left the team" not in (err.details() or "")  # the reason is the operator's
        _sign_one_dollar(new, "agent-2", s2)
        out = ctl(srv, pki, "revocations")
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.strip().splitlines()
        assert [ln.split("  ")[0] for ln in lines] == [
            "principal agent-1",
            f"serial {old_serial:x}",
            "principal planner-2",
        ]
        assert all(f"by operator/{OPERATOR}" in ln for ln in lines)
        cp = api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=TIMEOUT)

    db = config.parent / "state.db"
    records = [r for r in audit_log(db) if r["action"] == "identity.revoke"]
    assert [(r["actor"], r["kind"], r["value"], r["reason"]) for r in records] == [
        ({"role": "operator", "id": OPERATOR}, "principal", "agent-1", "key leaked"),
        ({"role": "operator", "id": OPERATOR}, "serial", f"{old_serial:x}", "laptop stolen"),
        ({"role": "operator", "id": OPERATOR}, "principal", "planner-2", "left the team"),
    ]
    key = config.parent / "audit.pem"
    key.write_text(cp.audit_public_key_pem, encoding="ascii")
    proc = audit_verify(db, key)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_revocation_reaches_a_second_signer_sharing_the_store(
    served_config: Path, pki: Pki
) -> None:
    config = served_config
    with running_api(config, pki) as (_, first), running_api(config, pki) as (_, second):
        sid = open_session(second.planner, "agent-1", "1000.00", timeout=TIMEOUT)
        _sign_one_dollar(second, "agent-1", sid)
        _revoke(first, principal_id="agent-1", reason="revoked on the first replica")
        deadline = time.monotonic() + 30  # the view is refreshed every second by default
        while True:
            try:
                _sign_one_dollar(second, "agent-1", sid)
            except grpc.RpcError as err:
                assert (err.code(), reason_of(err)) == (DENIED, REVOKED), err.details()
                break
            assert time.monotonic() < deadline, "the second signer still lets agent-1 sign"
            time.sleep(0.1)
        _sign_one_dollar(
            second, "agent-2", open_session(second.planner, "agent-2", "1.00", timeout=TIMEOUT)
        )


def test_the_log_says_what_was_revoked_and_by_which_operator(served_config: Path, pki: Pki) -> None:
    with running_api(served_config, pki) as (srv, api):
        _revoke(api, principal_id="agent-1", reason="key leaked")
        _revoke(api, cert_serial="0A:0B", reason="laptop stolen")
        _revoke(api, principal_id="agent-1", reason="twice")  # nothing new: no line
    lines = [json.loads(line) for line in srv.output if "identity revoked" in line]
    fields = ("msg", "revoked_kind", "revoked_value", "operator", "reason")
    assert [tuple(line[f] for f in fields) for line in lines] == [
        (
            f"identity revoked: principal agent-1 by operator/{OPERATOR}",
            "principal",
            "agent-1",
            f"operator/{OPERATOR}",
            "key leaked",
        ),
        (
            f"identity revoked: serial a0b by operator/{OPERATOR}",
            "serial",
            "a0b",
            f"operator/{OPERATOR}",
            "laptop stolen",
        ),
    ]
    assert all(line["level"] == "warning" for line in lines)


# -- who may revoke, and what --------------------------------------------------------------


def test_only_operators_may_revoke_or_list(served: tuple[ServeProcess, Api]) -> None:
    _, api = served
    for role, who in (("agent", "agent-1"), ("planner", "planner-1"), ("approver", "approver-1")):
        stub = control_pb2_grpc.ControlStub(api.channel(role, who))
        request = control_pb2.RevokeIdentityRequest(principal_id="agent-2", reason="not mine")
        assert_refused(stub.RevokeIdentity, request, DENIED, Reason.ROLE_NOT_ALLOWED.value)
        listing = control_pb2.ListRevocationsRequest()
        assert_refused(stub.ListRevocations, listing, DENIED, Reason.ROLE_NOT_ALLOWED.value)
    listed = api.control().ListRevocations(control_pb2.ListRevocationsRequest(), timeout=TIMEOUT)
    assert list(listed.revocations) == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"reason": "neither"}, Reason.FIELD_MISSING),
        ({"principal_id": "agent-1", "cert_serial": "0a", "reason": "both"}, Reason.FIELD_MISSING),
        ({"cert_serial": "xyz", "reason": "not hex"}, Reason.STRING_INVALID),
        ({"cert_serial": "00", "reason": "zero"}, Reason.STRING_INVALID),
        ({"cert_serial": "1" * 41, "reason": "over 20 octets"}, Reason.STRING_INVALID),
        ({"cert_serial": "-1", "reason": "negative"}, Reason.STRING_INVALID),
        ({"principal_id": "Agent-1", "reason": "upper case"}, Reason.STRING_INVALID),
        ({"principal_id": "agent-1"}, Reason.FIELD_MISSING),  # no reason
    ],
)
def test_bad_revocations_are_invalid_and_revoke_nothing(
    served: tuple[ServeProcess, Api], fields: dict[str, str], reason: Reason
) -> None:
    _, api = served
    request = control_pb2.RevokeIdentityRequest(**fields)
    assert_refused(api.control().RevokeIdentity, request, INVALID, reason.value)
    listed = api.control().ListRevocations(control_pb2.ListRevocationsRequest(), timeout=TIMEOUT)
    assert list(listed.revocations) == []


# -- the view fails closed -----------------------------------------------------------------


def test_the_view_refuses_every_call_while_the_revocations_cannot_be_read(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    view = RevocationView(
        store.revocations_after, store.revocation_generation, 60.0, time.monotonic
    )
    agent = Principal(Role.AGENT, "agent-1")
    view.check(agent, "a1")  # nothing revoked
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("ALTER TABLE revocations RENAME TO revocations_away")
    conn.commit()
    view.invalidate()
    with pytest.raises(Unavailable) as info:
        view.check(agent, "a1")
    assert info.value.reason is Reason.STORE_UNAVAILABLE
    conn.execute("ALTER TABLE revocations_away RENAME TO revocations")
    conn.execute(
        "INSERT INTO revocations VALUES ('serial', 'a1', 'stolen', 'operator/operator-1', 1)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(Forbidden) as refused:
        view.check(agent, "a1")
    assert refused.value.reason is Reason.IDENTITY_REVOKED
    view.check(agent, "a2")
    store.close()


def test_a_refresh_reads_only_the_revocations_committed_since_the_last_one(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    operator = Principal(Role.OPERATOR, OPERATOR)

    def revoke(kind: RevocationKind, value: str) -> None:
        event = audit_events.event("identity.revoke", operator, 1, kind=kind, value=value)
        assert store.revoke(Revocation(kind, value, "test", str(operator), 1), event)

    for n in range(1, 51):
        revoke(RevocationKind.SERIAL, format(n, "x"))
    read: list[int] = []  # rows each refresh read from the store

    def load_after(position: int) -> tuple[list[Revocation], int]:
        found, after = store.revocations_after(position)
        read.append(len(found))
        return found, after

    now = [0.0]
    view = RevocationView(load_after, store.revocation_generation, 60.0, lambda: now[0])
    agent = Principal(Role.AGENT, "agent-1")
    view.check(agent, "ff")
    assert read == [50]
    revoke(RevocationKind.PRINCIPAL, "agent-1")  # the generation moves: the next call reloads
    with pytest.raises(Forbidden):
        view.check(agent, "ff")
    assert read == [50, 1]
    now[0] += 61  # old: read again, and nothing is new
    view.check(Principal(Role.AGENT, "agent-2"), "ff")
    assert read == [50, 1, 0]
    for serial in ("1", "32"):  # what the first refresh read is still refused
        with pytest.raises(Forbidden) as info:
            view.check(Principal(Role.AGENT, "agent-2"), serial)
        assert info.value.reason is Reason.IDENTITY_REVOKED
    assert read == [50, 1, 0]  # no call since read the store again
    store.close()
