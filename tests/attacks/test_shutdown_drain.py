"""Attack (fault): SIGTERM while the store is slow.

A real ``paywarden serve``; the test holds the store's write lock (another
process's ``BEGIN IMMEDIATE``) while four Sign calls wait for it, then sends
SIGTERM. The server must stop taking work at once (health NOT_SERVING, new calls
refused with a reason code), answer the calls in flight within the grace period
and decide nothing after a caller saw an error, then seal the audit log and close
the store in that order, and exit.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paywarden.signer.api.admission import Admission, AdmissionInterceptor
from paywarden.signer.config import ServerConfig
from paywarden.signer.deadlines import Gate
from paywarden.signer.errors import Forbidden, Reason, Unavailable
from paywarden.signer.identity import Authenticator, Principal
from paywarden.v1 import control_pb2

from tests.helpers import ROOT, Pki, TestToken, write_config
from tests.test_killswitch import intent, metric, poll, running, scrape

GRACE = 5.0  # server.grace_seconds in write_config
IN_FLIGHT = 4


def test_sigterm_under_a_held_store_lock_drains_then_seals_then_closes(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    assert f"grace_seconds = {GRACE}" in config.read_text(encoding="utf-8")
    db = tmp_path / "state.db"
    with running(config, pki) as api:
        srv = api.srv
        sid = api.open_session("agent-1")
        assert api.attempt("agent-1", intent(sid)).signed
        checkpoint = api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
        pem = tmp_path / "audit.pem"
        pem.write_text(checkpoint.audit_public_key_pem, encoding="ascii")
        health = health_pb2_grpc.HealthStub(api.channel("operator", "operator-1"))
        requests = [intent(sid) for _ in range(IN_FLIGHT)]
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # the store is slow: another process writes
        pool = ThreadPoolExecutor(IN_FLIGHT)
        try:
            calls = [pool.submit(api.attempt, "agent-1", r) for r in requests]  # 30 s deadlines
            poll(
                lambda: metric(scrape(srv), "paywarden_calls_in_flight"),
                lambda n: n == IN_FLIGHT,
                "Sign calls waiting for the store",
            )
            srv.proc.send_signal(signal.SIGTERM)
            stopping_at = time.monotonic()

            # stop taking work at once
            poll(
                lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10).status,
                lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING,
                "health after SIGTERM",
            )
            late = api.attempt("agent-1", intent(sid))
            assert (late.code, late.reason) == ("UNAVAILABLE", "SHUTTING_DOWN"), late
            # every caller in flight is answered within the grace period, and fails closed
            answers = [c.result(timeout=GRACE + 10) for c in calls]
        finally:  # the store recovers only after every caller saw its answer
            holder.execute("ROLLBACK")
            holder.close()
            pool.shutdown()
        for a in answers:
            assert a.code == "UNAVAILABLE" and not a.jws, a
            assert a.reason in ("SHUTTING_DOWN", "STORE_UNAVAILABLE"), a
        srv.proc.wait(timeout=GRACE + 30)  # a generous bound, not a performance figure
        stopped_after = time.monotonic() - stopping_at
        assert srv.proc.returncode == 0

    output = "".join(srv.output)
    assert "closed database" not in output, output
    assert "final checkpoint failed" not in output, output
    assert "paywarden: stopped" in output
    assert stopped_after < GRACE + 30

    # nothing was decided for a caller that saw an error
    nonces = {r.nonce for r in requests} | {late.nonce}
    with sqlite3.connect(db) as conn:
        decided = {n for (n,) in conn.execute("SELECT nonce FROM decisions")}
        size = conn.execute("SELECT size FROM audit_state").fetchone()[0]
        sealed = conn.execute("SELECT MAX(size) FROM audit_checkpoints").fetchone()[0]
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit_log")]
    assert not nonces & decided
    assert not any(
        b["action"] == "sign.decision" and b["decision"]["nonce"] in nonces for b in bodies
    )
    # sealed: the last checkpoint covers every record, and the log verifies
    assert sealed == size
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "paywarden.signer.cli",
            "audit",
            "verify",
            "--db",
            str(db),
            "--public-key",
            str(pem),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


class _Aborted(Exception):
    pass


class _Context:
    """A call's context as admission reads it: the caller's certificate, and the abort."""

    def __init__(self, pem: bytes) -> None:
        self._pem = pem
        self.status: grpc.Status | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted


def test_a_stopping_signer_says_so_before_it_reads_the_store(pki: Pki) -> None:
    """Under a held store lock the revocations cannot be read (STORE_UNAVAILABLE); once
    the stop has begun a new call must still learn that the signer is stopping."""
    auth = Authenticator.from_pem(pki.trust_domain, pki.ca)

    def store_unreadable(principal: Principal, serial: str) -> None:  # the fault injected
        raise Unavailable(Reason.STORE_UNAVAILABLE, "the store is locked")

    auth.check_revocations(store_unreadable)
    gate = Gate()
    interceptor = AdmissionInterceptor(
        Admission.from_config(ServerConfig()), auth, None, ("/paywarden.v1.", gate)
    )
    _, agent = pki.cert("agent", "agent-1")

    def refused(method: str) -> str:
        context = _Context(agent)
        with pytest.raises(_Aborted):
            interceptor.admit(method, context, streaming=False)  # type: ignore[arg-type]
        assert context.status is not None
        return str(dict(context.status.trailing_metadata)["paywarden-reason"])

    assert refused("/paywarden.v1.Signer/Sign") == "STORE_UNAVAILABLE"
    gate.close(time.monotonic() + GRACE)
    assert refused("/paywarden.v1.Signer/Sign") == "SHUTTING_DOWN"
    assert refused("/paywarden.v1.Control/Freeze") == "SHUTTING_DOWN"
    # health is not ours to close: it is admitted (revocations it cannot read decide no
    # status question) and its answer, NOT_SERVING, is how callers learn of the stop
    health = _Context(agent)
    ticket = interceptor.admit("/grpc.health.v1.Health/Check", health, streaming=False)  # type: ignore[arg-type]
    interceptor._admission.leave(ticket)
    assert health.status is None

    def revoked(principal: Principal, serial: str) -> None:  # readable, and revoked
        raise Forbidden(Reason.IDENTITY_REVOKED, "revoked")

    auth.check_revocations(revoked)
    assert refused("/grpc.health.v1.Health/Check") == "IDENTITY_REVOKED"
