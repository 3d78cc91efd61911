"""Whom a mandate chain's root may be signed by, and the keys its hops hand on.

A root is trusted through its header: ``kid`` naming a configured issuer key, or ``x5c``
(standard base64 DER certificates, leaf first) whose last certificate is, or is directly
issued by, a configured root; the leaf is no CA and may sign (keyUsage), every certificate
above it is a CA within its path length, and all are valid now. The keys a chain hands
from hop to hop (``cnf.jwk``) are EC P-256 JWKs read strictly by :func:`p256_key`;
:func:`jwk_thumbprint` names one (RFC 7638).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.verify import mandate_errors as E
from paywarden.verify.sdjwt import Hop, b64url
from paywarden.verify.strict_json import b64url_encode

MAX_X5C = 5
_JWK_REQUIRED = frozenset({"kty", "crv", "x", "y"})
_JWK_OPTIONAL = {"kid": None, "use": "sig", "alg": "ES256"}  # None: any string


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A configured issuer key; ``provider_root``: it signs the mandate hop itself as the
    chain's root (an agent provider) and nothing else; otherwise it signs user credentials
    only. One key is never both."""

    key: ec.EllipticCurvePublicKey
    provider_root: bool


@dataclass(frozen=True, slots=True)
class TrustedIssuers:
    """Issuer keys by kid, and the roots an ``x5c`` chain must end at (never provider
    roots: an x5c-rooted chain is always a user-credential chain)."""

    keys: Mapping[str, TrustedIssuer]
    x5c_roots: Sequence[x509.Certificate]


def _bad_key(message: str) -> E.MandateError:
    return E.credential(E.MALFORMED, f"cnf.jwk: {message}")


def p256_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The public key of an EC P-256 JWK: ``kty``, ``crv``, ``x``, ``y`` (32 bytes each,
    canonical base64url, a point on the curve) and at most ``kid``, ``use`` ``sig``, ``alg``
    ``ES256``; any other member (``d`` above all) refused."""
    if not isinstance(jwk, Mapping):
        raise _bad_key("not a JSON object")
    members = set(jwk)
    if not _JWK_REQUIRED <= members or members - _JWK_REQUIRED - set(_JWK_OPTIONAL):
        raise _bad_key(f"members {E.shown(sorted(map(str, members)))} are not those of a P-256 key")
    if jwk["kty"] != "EC" or jwk["crv"] != "P-256":
        raise _bad_key("not an EC P-256 key")
    for name, value in _JWK_OPTIONAL.items():
        if name in jwk and not (
            isinstance(jwk[name], str) and (value is None or jwk[name] == value)
        ):
            raise _bad_key(f"{name} is not allowed for an ES256 key")
    coordinates = []
    for name in ("x", "y"):
        text = jwk[name]
        raw = b64url(text, f"cnf.jwk {name}") if isinstance(text, str) else b""
        if len(raw) != 32:
            raise _bad_key(f"{name} is not 32 bytes of base64url")
        coordinates.append(int.from_bytes(raw, "big"))
    try:
        return ec.EllipticCurvePublicNumbers(
            coordinates[0], coordinates[1], ec.SECP256R1()
        ).public_key()
    except ValueError:
        raise _bad_key("the point is not on P-256") from None


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an EC P-256 JWK: the hash of
    ``{"crv":..,"kty":"EC","x":..,"y":..}`` with no whitespace, members in that order."""
    p256_key(jwk)
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    text = json.dumps(members, separators=(",", ":"), ensure_ascii=True)
    return b64url_encode(hashlib.sha256(text.encode("ascii")).digest())


def cnf_key(claims: Mapping[str, Any], what: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The key in ``claims["cnf"]["jwk"]`` and its thumbprint."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict) or not isinstance(cnf.get("jwk"), dict):
        raise E.credential(E.MALFORMED, f"{what} has no cnf.jwk")
    return p256_key(cnf["jwk"]), jwk_thumbprint(cnf["jwk"])


def _untrusted(message: str) -> E.MandateError:
    return E.credential(E.ISSUER_UNTRUSTED, message)


def _certificates(x5c: object) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_X5C:
        raise E.credential(E.MALFORMED, f"x5c is not an array of 1 to {MAX_X5C} certificates")
    certs = []
    for entry in x5c:
        try:
            der = base64.b64decode(entry, validate=True) if isinstance(entry, str) else b""
            certs.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            raise E.credential(E.MALFORMED, "an x5c entry is not a DER certificate") from None
    return certs


def _current(cert: x509.Certificate, now: int) -> bool:
    at = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    """The value of ``cert``'s extension ``kind``; None when absent; an extension that
    cannot be read refuses the chain."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        # not DER a reader can parse, or an extension twice: cryptography raises these
        # outside ValueError
        raise _untrusted("an x5c certificate's extensions cannot be read") from None


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, x509.BasicConstraints)
    return constraints is not None and bool(constraints.ca)


def _check_path(path: Sequence[x509.Certificate]) -> None:
    """``path`` leaf first, the configured root last: the leaf is no CA and, when it has a
    keyUsage, may sign (digitalSignature); every other certificate is a CA, may sign
    certificates (keyCertSign) when it has a keyUsage, and has no more CAs below it (the
    leaf not counted) than its basicConstraints pathLenConstraint allows."""
    leaf = path[0]
    usage = _extension(leaf, x509.KeyUsage)
    if _is_ca(leaf):
        raise _untrusted("the x5c leaf is a CA certificate")
    if usage is not None and not usage.digital_signature:
        raise _untrusted("the x5c leaf's keyUsage does not allow digitalSignature")
    for below, ca in enumerate(path[1:]):
        constraints = _extension(ca, x509.BasicConstraints)
        usage = _extension(ca, x509.KeyUsage)
        if constraints is None or not constraints.ca:
            raise _untrusted("an x5c certificate above the leaf is not a CA")
        if usage is not None and not usage.key_cert_sign:
            raise _untrusted("an x5c CA's keyUsage does not allow keyCertSign")
        if constraints.path_length is not None and below > constraints.path_length:
            raise _untrusted("the x5c chain is longer than a CA's path length allows")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _x5c_key(x5c: object, roots: Sequence[x509.Certificate], now: int) -> tuple[Any, str]:
    certs = _certificates(x5c)
    for cert, issuer in itertools.pairwise(certs):
        if not _is_ca(issuer) or not _issued_by(cert, issuer):
            raise _untrusted("the x5c chain does not link up (each certificate by a CA after it)")
    last = certs[-1]
    root = next((r for r in roots if r == last), None) or next(
        (r for r in roots if _is_ca(r) and _issued_by(last, r)), None
    )
    if root is None:
        raise _untrusted("the x5c chain does not end at a configured root")
    path = certs if root == last else [*certs, root]
    if len(path) < 2:
        raise _untrusted("the x5c chain is only its root (a root signs no credential)")
    _check_path(path)
    if not all(_current(c, now) for c in path):
        raise _untrusted("a certificate of the x5c chain is not valid now")
    try:
        key = certs[0].public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _untrusted("the x5c leaf key cannot be read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise _untrusted("the x5c leaf key is not a P-256 key")
    return key, certs[0].subject.rfc4514_string()


def root_key(
    hop: Hop, issuers: TrustedIssuers, now: int
) -> tuple[ec.EllipticCurvePublicKey, str, bool]:
    """The key that must have signed the root hop, who that is (a kid, or the x5c leaf's
    subject), and whether it is a provider root (it signs the mandate hop, and only that)
    rather than a credential issuer."""
    kid, x5c = hop.header.get("kid"), hop.header.get("x5c")
    if x5c is not None:
        if kid is not None:
            raise E.credential(E.MALFORMED, "the root names both a kid and an x5c chain")
        key, subject = _x5c_key(x5c, issuers.x5c_roots, now)
        return key, subject, False
    issuer = issuers.keys.get(kid) if isinstance(kid, str) else None
    if issuer is None or not isinstance(kid, str):
        raise _untrusted(f"the root's kid {E.shown(kid)} is not a trusted issuer")
    if not isinstance(issuer.key, ec.EllipticCurvePublicKey) or issuer.key.curve.name != (
        "secp256r1"
    ):
        raise _untrusted(f"the issuer {E.shown(kid)} is not configured with a P-256 key")
    return issuer.key, kid, issuer.provider_root
