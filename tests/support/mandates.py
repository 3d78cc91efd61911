"""Mandate chains (AP2 v0.2 open payment mandates, SD-JWT hops joined by ``~~``) made with
the IETF reference implementation (the ``sd-jwt`` package, keys as jwcrypto JWKs), and that
implementation used hop by hop as the independent oracle.

A user-credential chain is ``join_hops(credential, user_mandate[, closed])``:

    parties = mandate_parties()
    cred = issue_credential(parties.issuer, parties.user, now=NOW)
    item = open_mandate(parties.agent, [budget("100.00"), recurrence("DAILY", 3)], now=NOW)
    hop1 = issue_user_mandate(parties.user, cred, item, now=NOW)
    chain = join_hops(cred, hop1, issue_closed_hop(parties.agent, hop1, now=NOW))

Constraint helpers return AP2 constraint objects; ``allowed_payees`` entries are SD array
elements; the mandate item is an SD array element of ``delegate_payload``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwcrypto.jwk import JWK
from paywarden.verify.mandates import TrustedIssuer, TrustedIssuers
from sd_jwt.common import SDObj
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.verifier import SDJWTVerifier

NOW = 1_790_000_000  # a fixed clock for the verifier (2026-09-21)
ISSUER_KID = "cred-issuer-1"
PROVIDER_KID = "agent-provider-1"
AUDIENCE = "paywarden"
OPEN_PAYMENT = "mandate.payment.open.1"
CLOSED_PAYMENT = "mandate.payment.1"
USER_TYP = "kb+sd-jwt+kb"
CLOSED_TYP = "kb+sd-jwt"


def decimals_of(currency: str) -> int | None:
    """The decimals the tests' signer knows currencies with (None: unknown)."""
    return {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}.get(currency)


# --- keys -----------------------------------------------------------------------------------


def mandate_key(kid: str | None = None, curve: str = "P-256") -> JWK:
    """A fresh EC private key as a jwcrypto JWK (``curve`` P-256 unless a test needs another)."""
    if kid is None:
        return JWK.generate(kty="EC", crv=curve)
    return JWK.generate(kty="EC", crv=curve, kid=kid)


def public_jwk(key: JWK) -> dict[str, Any]:
    """The public JWK members of ``key`` (what a ``cnf.jwk`` carries)."""
    exported: dict[str, Any] = json.loads(key.export_public())
    return exported


def ec_public_key(key: JWK) -> ec.EllipticCurvePublicKey:
    """``key``'s public key as a ``cryptography`` object (what TrustedIssuer takes)."""
    loaded = serialization.load_pem_public_key(key.export_to_pem())
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    return loaded


@dataclass(frozen=True)
class MandateParties:
    """Who signs a chain: the credential issuer, an agent provider (a provider root), the
    user (the credential's cnf), and the agent (the mandate's cnf)."""

    issuer: JWK = field(default_factory=lambda: mandate_key(ISSUER_KID))
    provider: JWK = field(default_factory=lambda: mandate_key(PROVIDER_KID))
    user: JWK = field(default_factory=mandate_key)
    agent: JWK = field(default_factory=mandate_key)


def mandate_parties() -> MandateParties:
    return MandateParties()


def trusted_issuers(
    parties: MandateParties,
    *,
    provider_root: bool = True,
    x5c_roots: Sequence[x509.Certificate] = (),
) -> TrustedIssuers:
    """The issuer as a user-credential issuer, and the provider (a provider root when
    ``provider_root``), by their kids."""
    return TrustedIssuers(
        keys={
            ISSUER_KID: TrustedIssuer(ec_public_key(parties.issuer), provider_root=False),
            PROVIDER_KID: TrustedIssuer(ec_public_key(parties.provider), provider_root),
        },
        x5c_roots=tuple(x5c_roots),
    )


@dataclass(frozen=True)
class X5cIssuer:
    """A credential issuer certified by a root: ``chain`` is the header's x5c (leaf first,
    standard base64 DER), ``key`` the leaf's private key, ``root`` the root to configure."""

    root: x509.Certificate
    chain: list[str]
    key: JWK
    root_key: JWK | None = None  # the root's private key (to sign as the root itself)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, Any],
    now: int,
    ca: bool,
    path_length: int | None = None,
    usage: Sequence[str] | None = None,
) -> x509.Certificate:
    at = datetime.datetime.fromtimestamp(now, datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - datetime.timedelta(days=1))
        .not_valid_after(at + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if usage is not None:
        bits = dict.fromkeys(KEY_USAGES, False) | dict.fromkeys(usage, True)
        builder = builder.add_extension(x509.KeyUsage(**bits), critical=True)
    return builder.sign(issuer[1], hashes.SHA256())


KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def x5c_issuer(
    now: int = NOW,
    *,
    subject: str = "Wallet Issuer",
    intermediate: bool = False,
    leaf_ca: bool = False,
    root_path_length: int | None = None,
    leaf_usage: Sequence[str] | None = None,
    ca_usage: Sequence[str] | None = None,
) -> X5cIssuer:
    """A root CA and a leaf (``CN=<subject>``) it issued (through an intermediate CA when
    ``intermediate``; the x5c then lists leaf, intermediate), valid around ``now``. Options
    for the refusals: the leaf a CA (``leaf_ca``), the root's pathLenConstraint, and a
    keyUsage (the names of its bits, ``KEY_USAGES``) on the leaf or on every CA."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_name = "Mandate Root CA"
    root = _certificate(
        root_name, root_key, (root_name, root_key), now, True, root_path_length, ca_usage
    )
    chain: list[x509.Certificate] = []
    signer: tuple[str, Any] = (root_name, root_key)
    if intermediate:
        middle_key = ec.generate_private_key(ec.SECP256R1())
        middle = _certificate("Mandate Issuing CA", middle_key, signer, now, True, None, ca_usage)
        chain.append(middle)
        signer = ("Mandate Issuing CA", middle_key)
    chain.insert(0, _certificate(subject, leaf_key, signer, now, leaf_ca, None, leaf_usage))
    x5c = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii") for c in chain
    ]
    return X5cIssuer(root, x5c, JWK.from_pyca(leaf_key), JWK.from_pyca(root_key))


# --- hashes and serialisation ---------------------------------------------------------------


def hop_hash(hop: str) -> str:
    """``sd_hash`` of a hop as presented (with its trailing ``~``)."""
    digest = hashlib.sha256(hop.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issuer_jwt_hash(hop: str) -> str:
    """``issuer_jwt_hash`` of a hop: over its issuer-signed JWT only."""
    return hop_hash(hop.split("~")[0])


def mandate_id_of(hop: str) -> str:
    """The mandate id of the hop carrying the mandate (and ``presentation`` of a closed hop):
    SHA-256 hex of the signed part (``header.payload``) of its issuer-signed JWT."""
    header, payload, _ = hop.split("~")[0].split(".")
    return hashlib.sha256(f"{header}.{payload}".encode("ascii")).hexdigest()


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def malleable_twin(hop: str) -> str:
    """``hop`` with its ES256 signature (r, s) replaced by (r, n - s): another spelling that
    verifies as well (what anyone holding a hop can make)."""
    jwt, *rest = hop.split("~")
    header, payload, signature = jwt.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    s = int.from_bytes(raw[32:], "big")
    twin = raw[:32] + (P256_ORDER - s).to_bytes(32, "big")
    encoded = base64.urlsafe_b64encode(twin).rstrip(b"=").decode("ascii")
    return "~".join([f"{header}.{payload}.{encoded}", *rest])


def join_hops(*hops: str) -> str:
    """The chain: every hop but the last loses its trailing ``~``, joined by ``~~``."""
    return "~~".join([h[:-1] for h in hops[:-1]] + [hops[-1]])


def decoded_disclosures(hop: str) -> list[list[Any]]:
    """The hop's disclosures, decoded."""
    return [
        json.loads(base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))) for d in hop.split("~")[1:-1]
    ]


def withhold(hop: str, drop: Callable[[list[Any]], bool]) -> str:
    """``hop`` presented without the disclosures for which ``drop(decoded)`` is true."""
    jwt, *rest = hop.split("~")
    pairs = zip(rest[:-1], decoded_disclosures(hop), strict=True)
    return "~".join([jwt, *[d for d, decoded in pairs if not drop(decoded)], ""])


def with_jws_header(hop: str, header: Mapping[str, Any]) -> str:
    """``hop`` with its JWS header replaced (the signature left as it was): a forgery."""
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    jwt, *rest = hop.split("~")
    return "~".join([encoded + jwt[jwt.index(".") :], *rest])


# --- constraints and the mandate item -------------------------------------------------------


def amount_range(max_minor: Any, min_minor: Any = None, currency: str = "USD") -> dict[str, Any]:
    """``payment.amount_range``: per payment, MINOR units."""
    out = {"type": "payment.amount_range", "currency": currency, "max": max_minor}
    return out if min_minor is None else {**out, "min": min_minor}


def budget(max_major: Any, currency: str = "USD") -> dict[str, Any]:
    """``payment.budget``: the total, MAJOR units (a float is written as its shortest
    decimal, ``100.5`` as ``100.5``)."""
    return {"type": "payment.budget", "max": max_major, "currency": currency}


def recurrence(frequency: str = "MONTHLY", max_occurrences: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "payment.agent_recurrence", "frequency": frequency}
    return out if max_occurrences is None else {**out, "max_occurrences": max_occurrences}


def merchant(merchant_id: str | None, name: str = "Demo Merchant") -> dict[str, Any]:
    out = {"name": name, "website": f"https://{merchant_id or 'anon'}.example"}
    return out if merchant_id is None else {"id": merchant_id, **out}


def allowed_payees(*merchants: Mapping[str, Any], selective: bool = True) -> dict[str, Any]:
    """``payment.allowed_payees`` with each entry an SD array element (unless not
    ``selective``)."""
    entries = [SDObj(dict(m)) if selective else dict(m) for m in merchants]
    return {"type": "payment.allowed_payees", "allowed": entries}


def execution_date(not_before: str | None = None, not_after: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "payment.execution_date"}
    out |= {"not_before": not_before} if not_before else {}
    return out | ({"not_after": not_after} if not_after else {})


def reference(
    transaction_id: str = "FzLoxbbtgQGYZxoSM2NJYJtkFTSsdfUBoVEQ12k7JN8",
) -> dict[str, Any]:
    return {"type": "payment.reference", "conditional_transaction_id": transaction_id}


def open_mandate(
    agent_key: JWK,
    constraints: Sequence[Any],
    *,
    now: int = NOW,
    ttl: int | None = 3600,
    vct: str = OPEN_PAYMENT,
    **claims: Any,
) -> dict[str, Any]:
    """The open payment mandate item: ``vct``, ``constraints`` (a list), ``cnf.jwk`` = the
    agent's public key, ``iat`` = now, ``exp`` = now + ttl (no ``exp`` when ttl is None),
    and ``claims`` (presets such as ``payee``, or what a test adds)."""
    item: dict[str, Any] = {"vct": vct, "constraints": list(constraints)}
    item |= {"cnf": {"jwk": public_jwk(agent_key)}, "iat": now}
    item |= {} if ttl is None else {"exp": now + ttl}
    return item | claims


# --- hops -----------------------------------------------------------------------------------


def issue_hop(
    key: JWK,
    claims: Mapping[str, Any],
    *,
    typ: str,
    header: Mapping[str, Any] | None = None,
    holder_key: JWK | None = None,
    sign_alg: str = "ES256",
) -> str:
    """An SD-JWT (``jwt~disclosures~``) of ``claims`` (SDObj marks what is selective), signed
    by ``key`` with header ``typ`` and ``header``; ``holder_key`` adds a top-level cnf."""
    issuer = SDJWTIssuer(
        dict(claims),
        key,
        holder_key=holder_key,
        sign_alg=sign_alg,
        extra_header_parameters={"typ": typ, **(header or {})},
    )
    hop: str = issuer.sd_jwt_issuance
    return hop


def issue_credential(
    issuer_key: JWK,
    user_key: JWK,
    *,
    now: int = NOW,
    kid: str | None = ISSUER_KID,
    x5c: Sequence[str] | None = None,
    typ: str = "dc+sd-jwt",
    ttl: int | None = 365 * 86400,
    claims: Mapping[str, Any] | None = None,
    sign_alg: str = "ES256",
) -> str:
    """Hop 0 of a user-credential chain: a credential with top-level ``cnf.jwk`` = the user's
    key, signed by the issuer (header ``kid``, or ``x5c`` when given); ``exp`` = now + ttl
    in the signed payload (none when ttl is None: ``claims`` may then add one, selective
    with ``SDObj("exp")``)."""
    header: dict[str, Any] = {"kid": kid} if x5c is None and kid else {}
    header |= {} if x5c is None else {"x5c": list(x5c)}
    body = {"iss": "https://issuer.example", "vct": "com.emvco.dpc", "iat": now - 60}
    body |= {} if ttl is None else {"exp": now + ttl}
    body |= {SDObj("pan_last_four"): "4242", **(claims or {})}
    return issue_hop(
        issuer_key, body, typ=typ, header=header, holder_key=user_key, sign_alg=sign_alg
    )


def _link(previous: str, link: str) -> dict[str, str]:
    return {link: hop_hash(previous) if link == "sd_hash" else issuer_jwt_hash(previous)}


def issue_user_mandate(
    user_key: JWK,
    previous: str,
    mandate: Mapping[str, Any],
    *,
    now: int = NOW,
    aud: str = "https://wallet.example",
    nonce: str = "n-user-1",
    typ: str = USER_TYP,
    link: str = "sd_hash",
    claims: Mapping[str, Any] | None = None,
    sign_alg: str = "ES256",
) -> str:
    """Hop 1: the user's ``kb+sd-jwt+kb`` hop: ``iat``, ``aud``, ``nonce``, the link claim
    (``sd_hash`` or ``issuer_jwt_hash``) to ``previous``, and ``delegate_payload`` with the
    open mandate as an SD array element."""
    body = {"iat": now, "aud": aud, "nonce": nonce, **_link(previous, link)}
    body |= {"delegate_payload": [SDObj(dict(mandate))], **(claims or {})}
    return issue_hop(user_key, body, typ=typ, sign_alg=sign_alg)


def issue_root_mandate(
    provider_key: JWK,
    mandate: Mapping[str, Any],
    *,
    now: int = NOW,
    kid: str = PROVIDER_KID,
    typ: str = "example+sd-jwt",
    claims: Mapping[str, Any] | None = None,
) -> str:
    """Hop 0 of a provider-root chain: the agent provider signs the open mandate itself."""
    body = {"iss": "https://provider.example", "iat": now, **(claims or {})}
    body |= {"delegate_payload": [SDObj(dict(mandate))]}
    return issue_hop(provider_key, body, typ=typ, header={"kid": kid})


def closed_mandate(payee: str = "m1", amount: int = 1990, currency: str = "USD") -> dict[str, Any]:
    """A closed payment mandate (what an agent hop may disclose; the verifier ignores it)."""
    return {
        "vct": CLOSED_PAYMENT,
        "transaction_id": "tx-1",
        "payee": merchant(payee),
        "payment_amount": {"amount": amount, "currency": currency},
        "payment_instrument": {"id": "stub", "type": "card"},
    }


def issue_closed_hop(
    agent_key: JWK,
    previous: str,
    *,
    now: int = NOW,
    aud: str = AUDIENCE,
    nonce: str = "n-agent-1",
    typ: str = CLOSED_TYP,
    link: str = "sd_hash",
    mandate: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """The closed agent hop (``kb+sd-jwt``) linked to ``previous`` (the mandate hop), with
    ``mandate`` (a closed mandate) as an SD element of delegate_payload when given."""
    body = {"iat": now, "aud": aud, "nonce": nonce, **_link(previous, link), **(claims or {})}
    body |= {} if mandate is None else {"delegate_payload": [SDObj(dict(mandate))]}
    return issue_hop(agent_key, body, typ=typ)


def user_credential_chain(
    parties: MandateParties,
    constraints: Sequence[Any],
    *,
    now: int = NOW,
    closed: bool = False,
    nonce: str = "n-agent-1",
    **mandate_claims: Any,
) -> str:
    """A whole user-credential chain (2 hops, 3 with the closed agent hop)."""
    credential = issue_credential(parties.issuer, parties.user, now=now)
    item = open_mandate(parties.agent, constraints, now=now, **mandate_claims)
    hop1 = issue_user_mandate(parties.user, credential, item, now=now)
    if not closed:
        return join_hops(credential, hop1)
    return join_hops(credential, hop1, issue_closed_hop(parties.agent, hop1, now=now, nonce=nonce))


# --- the oracle -----------------------------------------------------------------------------


def _next_key(claims: Mapping[str, Any]) -> JWK | None:
    cnf = claims.get("cnf")
    if cnf is None:
        items = claims.get("delegate_payload") or [{}]
        cnf = items[0].get("cnf") if isinstance(items[0], dict) else None
    return None if cnf is None else JWK(**cnf["jwk"])


def oracle_verify(chain: str, roots: Mapping[str, JWK]) -> list[dict[str, Any]]:
    """Each hop checked by sd-jwt's SDJWTVerifier: the root with ``roots[kid]`` (or the x5c
    leaf's key, the chain itself not checked), each later hop with the previous hop's cnf.jwk
    (top-level, else the disclosed delegate item's), and its ``sd_hash`` /
    ``issuer_jwt_hash`` against the previous hop. Returns the verified payloads; raises
    whatever the library raises, or AssertionError for a link."""
    segments = chain.split("~~")
    hops = [s + "~" for s in segments[:-1]] + [segments[-1]]
    payloads: list[dict[str, Any]] = []
    key: JWK | None = None
    for index, hop in enumerate(hops):

        def key_of(
            _iss: str | None, header: dict[str, Any], at: int = index, handed: JWK | None = key
        ) -> JWK:
            if at > 0:
                assert handed is not None, "the previous hop hands on no key"
                return handed
            if "x5c" in header:
                leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
                return JWK.from_pyca(leaf.public_key())
            return roots[header["kid"]]

        payload: dict[str, Any] = SDJWTVerifier(hop, key_of).get_verified_payload()
        if index > 0:
            previous = hops[index - 1]
            assert payload.get("sd_hash", hop_hash(previous)) == hop_hash(previous)
            wanted = issuer_jwt_hash(previous)
            assert payload.get("issuer_jwt_hash", wanted) == wanted
        payloads.append(payload)
        key = _next_key(payload)
    return payloads
