"""Principal ids are lower case: ``approver/Agent-1`` must not stand beside ``agent-1``.

The attack: a certificate for ``approver/Dev-Agent`` approved ``dev-agent``'s
payment, because ids were compared case-sensitively. Ids are now lower-case
only, refused at the TLS identity step, and scripts/pki.py will not issue
others (nor an id that is not a safe file name).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from paywarden.signer.errors import Reason
from paywarden.v1 import approvals_pb2, approvals_pb2_grpc

from tests.attacks.certs import client_cert, spiffe
from tests.helpers import Pki, reason_of
from tests.support.cli import pki_script

TIMEOUT = 10


def _list_pending(addr: str, pki: Pki, principal: str) -> approvals_pb2.ListPendingResponse:
    cert = client_cert(pki, spiffe(pki, "approver", principal))
    with cert.channel(addr, pki) as ch:
        stub = approvals_pb2_grpc.ApprovalsStub(ch)
        return stub.ListPending(approvals_pb2.ListPendingRequest(), timeout=TIMEOUT)


@pytest.mark.parametrize("principal", ["Agent-1", "AGENT-1", "agent-I"])
def test_upper_case_approver_id_is_refused_at_the_identity_step(
    grpc_addr: str, grpc_server: grpc.Server, pki: Pki, principal: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _list_pending(grpc_addr, pki, principal)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == Reason.NO_IDENTITY


def test_the_same_certificate_with_a_lower_case_id_is_accepted(
    grpc_addr: str, grpc_server: grpc.Server, pki: Pki
) -> None:
    assert isinstance(_list_pending(grpc_addr, pki, "agent-1"), approvals_pb2.ListPendingResponse)


@pytest.mark.parametrize(
    "bad_id",
    ["Dev-Agent", "../x", "../../etc/x", "a/b", ".hidden", "-flag", "x" * 129, "agent 1"],
)
def test_pki_issue_refuses_an_id_that_is_not_a_principal_id(tmp_path: Path, bad_id: str) -> None:
    ca_dir = tmp_path / "pki"
    assert pki_script("init-ca", "--dir", ca_dir).returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = pki_script("issue", "--dir", ca_dir, "--role", "approver", f"--id={bad_id}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is not a principal id" in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_pki_issue_accepts_a_lower_case_id(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    assert pki_script("init-ca", "--dir", ca_dir).returncode == 0
    proc = pki_script("issue", "--dir", ca_dir, "--role", "agent", "--id", "dev-agent_2.prod")
    assert proc.returncode == 0, proc.stderr
    assert (ca_dir / "agent-dev-agent_2.prod.crt").exists()
