"""Payments as a payee receives them: signed by the in-process stack, the signer's JWKS,
Signer.CheckPayment, and JWS made by hand or by an independent library (pyjwt) to forge
what the signer would never sign."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.v1 import signer_pb2

from tests.helpers import ROOT, Pki, Stack
from tests.support.cli import paywarden
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.sessions import open_session

PAYEE = "acme-weather"  # a payee with a certificate (tests/conftest.py PAYEES)
OTHER_PAYEE = "payee-1"
JWS_TYPE = "paywarden-payment+jwt"
TIMEOUT = 10


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_payment(
    api: Api,
    stack: Stack,
    *,
    agent: str = "agent-1",
    payee: str = PAYEE,
    amount: str = "1.25",
    key_id: str = "payments.v1",
    expires_in: int = 60,
) -> signer_pb2.SignResponse:
    """``agent`` pays ``payee`` in a session of its own (planner-1's); the signer's answer."""
    sid = open_session(api.planner, agent, "100.00", timeout=TIMEOUT)
    request = sign_request(
        stack, sid, amount=amount, payee=payee, key_id=key_id, expires_in=expires_in
    )
    resp: signer_pb2.SignResponse = api.signer_of(agent).Sign(request, timeout=TIMEOUT)
    assert resp.status == signer_pb2.SIGNED
    return resp


def exported_jwks(api: Api, payee: str = PAYEE) -> str:
    """The JWKS as a payee exports it from the signer (Signer.GetPublicKeys)."""
    keys = api.signer_as("payee", payee).GetPublicKeys(
        signer_pb2.GetPublicKeysRequest(), timeout=TIMEOUT
    )
    return str(keys.jwks_json)


def check_payment(
    api: Api, decision_id: str, *, role: str = "payee", who: str = PAYEE
) -> signer_pb2.CheckPaymentResponse:
    """``who`` (a ``role``) asks Signer.CheckPayment about ``decision_id``."""
    resp: signer_pb2.CheckPaymentResponse = api.signer_as(role, who).CheckPayment(
        signer_pb2.CheckPaymentRequest(decision_id=decision_id), timeout=TIMEOUT
    )
    return resp


def with_header(jws: str, header: dict[str, Any] | bytes) -> str:
    """``jws`` with its protected header replaced (payload and signature kept)."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":"))
    encoded = b64(raw.encode("utf-8") if isinstance(raw, str) else raw)
    _, payload, signature = jws.split(".")
    return f"{encoded}.{payload}.{signature}"


def pyjwt_es256(payload: bytes, key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """An ES256 JWS made by pyjwt (not our code) over exactly ``payload``."""
    token: str = jwt.PyJWS().encode(
        payload, key, algorithm="ES256", headers={"kid": kid, "typ": JWS_TYPE}
    )
    return token


def jwk_of(key: ec.EllipticCurvePrivateKey, kid: str, state: str = "active") -> dict[str, Any]:
    """The JWK the signer would publish for ``key`` (same members, same encoding)."""
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
        "paywarden_state": state,
        "paywarden_max_lifetime": 300,
    }


def paywarden_with_input(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m paywarden.signer.cli ARGS`` with ``stdin`` on its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "paywarden.signer.cli", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ctl_at(addr: str, pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    """``paywarden ctl ARGS`` as operator-1 against the signer at ``addr``."""
    return paywarden(
        "ctl", "--addr", addr, "--ca", pki.dir / "ca.crt",
        "--cert", pki.dir / "operator-operator-1.crt",
        "--key", pki.dir / "operator-operator-1.key",
        *args, timeout=60,
    )  # fmt: skip
