"""``paywarden jwks`` and ``paywarden check-payment``: a payee's two calls from the command line.

A payee exports the JWKS with its own certificate, checks a payment offline against it with
``paywarden verify`` and asks the signer, before it settles, whether the payment still stands;
an operator's freeze of the agent turns the answer to VOIDED (exit 1) until it is lifted.
Against the in-process stack (real token, store and mutual TLS).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from paywarden.v1 import signer_pb2

from tests.helpers import Pki, Stack
from tests.support.cli import paywarden
from tests.support.clients import Api
from tests.support.payments import OTHER_PAYEE, PAYEE, ctl_at, sign_payment


def _as_payee(
    command: str, grpc_addr: str, pki: Pki, *args: str | Path, payee: str = PAYEE
) -> subprocess.CompletedProcess[str]:
    """``paywarden COMMAND`` with ``payee``'s certificate against the signer at ``grpc_addr``."""
    return paywarden(
        command, "--addr", grpc_addr, "--ca", pki.dir / "ca.crt",
        "--cert", pki.dir / f"payee-{payee}.crt", "--key", pki.dir / f"payee-{payee}.key",
        *args, timeout=60,
    )  # fmt: skip


def test_the_exported_jwks_verifies_a_payment_offline(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki, tmp_path: Path
) -> None:
    resp = sign_payment(api, stack, amount="3.75")
    out = tmp_path / "jwks.json"
    exported = _as_payee("jwks", grpc_addr, pki, "--out", out)
    assert exported.returncode == 0, exported.stderr
    keys = json.loads(out.read_text())["keys"]
    assert resp.key_id in {k["kid"] for k in keys}
    assert all("d" not in k for k in keys)  # public keys only

    valid = paywarden("verify", resp.jws, "--jwks", out, "--payee", PAYEE)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "3.75" in valid.stdout
    wrong = paywarden("verify", resp.jws, "--jwks", out, "--payee", OTHER_PAYEE)
    assert wrong.returncode == 1 and "WRONG_PAYEE" in wrong.stdout + wrong.stderr


def test_check_payment_is_valid_then_voided_by_a_freeze_then_valid_again(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki
) -> None:
    resp = sign_payment(api, stack, agent="agent-2", amount="4.10")
    valid = _as_payee("check-payment", grpc_addr, pki, resp.decision_id, "--json")
    assert valid.returncode == 0, valid.stderr
    answer = json.loads(valid.stdout)
    assert answer["standing"] == signer_pb2.PaymentStanding.Name(signer_pb2.VALID)
    assert (answer["decision_id"], answer["payee"], answer["amount"]) == (
        resp.decision_id,
        PAYEE,
        "4.10",
    )

    frozen = ctl_at(grpc_addr, pki, "freeze", "agent", "agent-2", "--reason", "incident 9")
    assert frozen.returncode == 0, frozen.stderr
    try:
        voided = _as_payee("check-payment", grpc_addr, pki, resp.decision_id)
        assert voided.returncode == 1, voided.stdout + voided.stderr
        assert voided.stdout.startswith("VOIDED: FROZEN"), voided.stdout
    finally:
        lifted = ctl_at(grpc_addr, pki, "unfreeze", "agent", "agent-2", "--reason", "over")
        assert lifted.returncode == 0, lifted.stderr
    again = _as_payee("check-payment", grpc_addr, pki, resp.decision_id)
    assert again.returncode == 0 and again.stdout.startswith("VALID: 4.10 USD"), again.stdout


def test_another_payees_payment_fails_like_an_unknown_one(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki
) -> None:
    resp = sign_payment(api, stack)
    other = _as_payee("check-payment", grpc_addr, pki, resp.decision_id, payee=OTHER_PAYEE)
    unknown = _as_payee("check-payment", grpc_addr, pki, "dec_" + "A" * 22, payee=OTHER_PAYEE)
    assert other.returncode == unknown.returncode == 1
    assert other.stdout == unknown.stdout == ""
    assert "NOT_FOUND" in other.stderr
    assert other.stderr.replace(resp.decision_id, "ID") == unknown.stderr.replace(
        "dec_" + "A" * 22, "ID"
    )


def test_unreadable_certificate_files_ask_nothing(grpc_addr: str, pki: Pki, tmp_path: Path) -> None:
    out = paywarden(
        "check-payment", "dec_" + "A" * 22, "--addr", grpc_addr, "--ca", pki.dir / "ca.crt",
        "--cert", tmp_path / "missing.crt", "--key", tmp_path / "missing.key",
    )  # fmt: skip
    assert out.returncode == 2 and "cannot read" in out.stderr
