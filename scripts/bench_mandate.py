"""The mandate parts of scripts/bench.py (``--mandate``): the keys and ``[mandates]`` section of
the bench's data directory, and the mandate chain each benchmark session is opened from.

With ``--mandate`` every session is opened from an AP2 v0.2 open payment mandate instead of a
planner's budget, as docs/mandates.md describes: a **user-credential chain** of two SD-JWT
hops joined by ``~~``. Hop 0 is the user's credential (``typ`` ``dc+sd-jwt``), signed by the
run's issuer key (header ``kid``), with the user's key in ``cnf.jwk``. Hop 1 (``typ``
``kb+sd-jwt+kb``) is signed by the user's key and carries ``iat``, ``aud``, ``nonce``,
``sd_hash`` (of hop 0 as presented) and ``delegate_payload``, whose one element is the open
payment mandate as a selectively disclosed array element: ``vct`` ``mandate.payment.open.1``,
``constraints`` ``payment.amount_range`` (per payment, minor units) and ``payment.budget``
(the total, major units, far more than a run spends), ``cnf.jwk`` = the agent's key, ``iat``
and ``exp``. No closed agent hop: the agent's possession is not what is measured.

The data directory gains ``mandates/`` (the issuer's, the user's and each agent's P-256
private key, PEM) and the configuration a ``[mandates]`` section trusting the issuer by an
inline ``jwk`` and registering each agent's key (its RFC 7638 thumbprint) in
``[mandates.agent_keys]``. Each session's hop 1 has its own ``nonce``, so each session is
opened from its own mandate (its own ledger).

Built with ``cryptography`` only (ES256 with raw ``r || s`` signatures, SHA-256 disclosure
digests, unpadded base64url): tests/test_bench_mandate.py checks a chain made here against
the signer's verifier and against the sd-jwt reference implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER_KID = "bench-mandate-issuer"
OPEN_PAYMENT = "mandate.payment.open.1"
CREDENTIAL_TYP = "dc+sd-jwt"
MANDATE_TYP = "kb+sd-jwt+kb"
USER_AUD = "https://wallet.bench.example"
BUDGET_MAJOR = 100_000_000  # payment.budget max, major units: beyond any run (or --preload)
MAX_PER_PAYMENT_MAJOR = 100  # payment.amount_range max, major units (sent in minor units)
TTL_SECONDS = 2 * 3600  # the mandate's exp: beyond the sessions' hour


# -- encoding and signing ----------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sd_digest(text: str) -> str:
    """The SD-JWT digest of ``text`` (a disclosure, or a hop for ``sd_hash``)."""
    return b64url(hashlib.sha256(text.encode("ascii")).digest())


def public_jwk(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The EC P-256 public JWK (``kty``, ``crv``, ``x``, ``y``) of ``key``."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint of an EC JWK (members crv, kty, x, y in that order)."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    return b64url(hashlib.sha256(_json(members)).digest())


def array_disclosure(value: Any) -> tuple[str, dict[str, str]]:
    """An SD array element: its disclosure ``[salt, value]`` and the ``{"...": digest}``
    that stands for it in the array."""
    disclosure = b64url(_json([b64url(secrets.token_bytes(16)), value]))
    return disclosure, {"...": sd_digest(disclosure)}


def sd_jwt(
    key: ec.EllipticCurvePrivateKey,
    header: Mapping[str, Any],
    payload: Mapping[str, Any],
    disclosures: Sequence[str] = (),
) -> str:
    """The hop ``jwt~disclosure~…~``: ``payload`` (with ``_sd_alg`` sha-256) signed ES256."""
    signing_input = ".".join(
        (
            b64url(_json({"alg": "ES256", **header})),
            b64url(_json({**payload, "_sd_alg": "sha-256"})),
        )
    )
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return "~".join([f"{signing_input}.{signature}", *disclosures, ""])


def join_hops(*hops: str) -> str:
    """The chain: every hop but the last without its trailing ``~``, joined by ``~~``."""
    return "~~".join([h[:-1] for h in hops[:-1]] + [hops[-1]])


# -- the chain ---------------------------------------------------------------------------------


def credential(
    issuer: ec.EllipticCurvePrivateKey, user: ec.EllipticCurvePrivateKey, now: int
) -> str:
    """Hop 0: the user's credential, signed by the issuer, the user's key in ``cnf.jwk``."""
    payload = {
        "iss": "https://issuer.bench.example",
        "vct": "com.emvco.dpc",
        "iat": now - 60,
        "exp": now + 365 * 86400,
        "cnf": {"jwk": public_jwk(user)},
    }
    return sd_jwt(issuer, {"typ": CREDENTIAL_TYP, "kid": ISSUER_KID}, payload)


def open_mandate(
    agent: ec.EllipticCurvePublicKey, currency: str, decimals: int, now: int
) -> dict[str, Any]:
    """The open payment mandate item: per payment 1 minor unit to
    :data:`MAX_PER_PAYMENT_MAJOR` (minor units), in all :data:`BUDGET_MAJOR` (major units)."""
    amount_range = {
        "type": "payment.amount_range",
        "currency": currency,
        "min": 1,
        "max": MAX_PER_PAYMENT_MAJOR * 10**decimals,
    }
    budget = {"type": "payment.budget", "currency": currency, "max": BUDGET_MAJOR}
    return {
        "vct": OPEN_PAYMENT,
        "constraints": [amount_range, budget],
        "cnf": {"jwk": public_jwk(agent)},
        "iat": now,
        "exp": now + TTL_SECONDS,
    }


def user_mandate(
    user: ec.EllipticCurvePrivateKey, previous: str, item: Mapping[str, Any], nonce: str, now: int
) -> str:
    """Hop 1: the user's ``kb+sd-jwt+kb`` hop linked to ``previous`` by ``sd_hash``, the
    mandate ``item`` a disclosed element of ``delegate_payload``."""
    disclosure, element = array_disclosure(dict(item))
    payload = {
        "iat": now,
        "aud": USER_AUD,
        "nonce": nonce,
        "sd_hash": sd_digest(previous),
        "delegate_payload": [element],
    }
    return sd_jwt(user, {"typ": MANDATE_TYP}, payload, [disclosure])


def mandate_chain(
    issuer: ec.EllipticCurvePrivateKey,
    user: ec.EllipticCurvePrivateKey,
    agent: ec.EllipticCurvePublicKey,
    *,
    currency: str,
    decimals: int,
    now: int,
    nonce: str,
) -> str:
    """A whole user-credential chain binding ``agent``'s key to an open payment mandate."""
    hop0 = credential(issuer, user, now)
    hop1 = user_mandate(user, hop0, open_mandate(agent, currency, decimals, now), nonce, now)
    return join_hops(hop0, hop1)


# -- the data directory ------------------------------------------------------------------------


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def provision(directory: Path, agents: Sequence[str]) -> str:
    """Makes the issuer's, the user's and each agent's P-256 key in ``directory``; the
    ``[mandates]`` configuration that trusts the issuer and registers the agents' keys."""
    directory.mkdir(mode=0o700)
    parties = {"issuer": ec.generate_private_key(ec.SECP256R1())}
    parties["user"] = ec.generate_private_key(ec.SECP256R1())
    parties |= {f"agent-{a}": ec.generate_private_key(ec.SECP256R1()) for a in agents}
    for name, key in parties.items():
        path = directory / f"{name}.pem"
        path.write_bytes(_pem(key))
        path.chmod(0o600)
    jwk = ", ".join(f'{k} = "{v}"' for k, v in public_jwk(parties["issuer"]).items())
    lines = ["", "[mandates]", "", "[[mandates.issuers]]", f'kid = "{ISSUER_KID}"']
    lines += [f"jwk = {{ {jwk} }}", "", "[mandates.agent_keys]"]
    for agent in agents:
        lines.append(f'"{agent}" = ["{thumbprint(public_jwk(parties[f"agent-{agent}"]))}"]')
    return "\n".join(lines) + "\n"


def chain_for(
    directory: Path, agent: str, serial: int, currency: str, decimals: int, now: int
) -> str:
    """The chain session ``serial`` of ``agent`` is opened from (keys from :func:`provision`):
    a mandate of its own (its hop 1's nonce names the session)."""
    return mandate_chain(
        _load(directory / "issuer.pem"),
        _load(directory / "user.pem"),
        _load(directory / f"agent-{agent}.pem").public_key(),
        currency=currency,
        decimals=decimals,
        now=now,
        nonce=f"bench-session-{serial}-{secrets.token_hex(8)}",
    )
