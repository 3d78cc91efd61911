"""A mandate chain (AP2 v0.2 open payment mandate, Verifiable Intent L2) checked offline.

The chain is SD-JWT hops joined by ``~~``; what is accepted:

1. a **user-credential chain**: hop 0 a credential signed by a trusted issuer (``kid``, or
   ``x5c`` to a configured root) with a top-level ``cnf.jwk`` (the user's key), an ``exp``
   in its signed payload (not selectively disclosed) and no mandate; hop 1 signed by that
   key, ``typ`` ``kb+sd-jwt+kb``, ``iat``/``aud``/``nonce``, one link claim to hop 0, and
   exactly one disclosed ``delegate_payload`` item: the open mandate, whose ``cnf.jwk`` is
   the agent's key;
2. a **provider root**: hop 0 is itself the mandate hop, only for an issuer configured with
   ``provider_root``; such an issuer roots nothing else, and a credential issuer (or an
   ``x5c`` root) never roots a mandate hop;
3. then optionally a **closed agent hop** (``kb+sd-jwt``), signed by the agent key, fresh,
   for our audience, linked to the mandate hop: proof the agent holds the key now.

Every hop is ES256 (P-256) and nothing else; every presented disclosure answers a digest of
its hop exactly once; the mandate must carry ``exp``. Any failure is a :class:`MandateError`
with its AP2 code (``invalid_credential``, ``invalid_mandate``, ``unresolved_constraint``)
and our reason; no other exception leaves :func:`verify_mandate`.

A mandate's id (the key of its ledger) is the SHA-256 of what the mandate hop's signature
covers, so it does not change with the disclosures presented nor with the second spelling
every ES256 signature has; a closed hop's ``presentation`` is named the same way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.verify import mandate_errors as E
from paywarden.verify.mandate_errors import MandateCode, MandateError
from paywarden.verify.mandate_terms import Constraints, constraints, epoch, major_to_minor
from paywarden.verify.mandate_trust import (
    TrustedIssuer,
    TrustedIssuers,
    cnf_key,
    jwk_thumbprint,
    p256_key,
    root_key,
)
from paywarden.verify.sdjwt import (
    Hop,
    check_es256,
    check_header,
    check_link,
    is_withheld,
    parse_chain,
    resolve,
    strip,
)

__all__ = [
    "Constraints",
    "MandateCode",
    "MandateError",
    "TrustedIssuer",
    "TrustedIssuers",
    "VerifiedMandate",
    "jwk_thumbprint",
    "major_to_minor",
    "p256_key",
    "verify_mandate",
]

OPEN_PAYMENT = "mandate.payment.open.1"
CLOSED_PAYMENT = "mandate.payment.1"
ROOT_TYPS = frozenset({"dc+sd-jwt", "vc+sd-jwt", "example+sd-jwt", "sd+jwt"})
MANDATE_TYP = frozenset({"kb+sd-jwt+kb"})
CLOSED_TYP = frozenset({"kb+sd-jwt"})
SKEW = 60  # seconds a presenter's clock may be ahead of ours
CLOSED_MAX_AGE = 300  # a closed agent hop proves possession for this long after its iat
_NONCE = re.compile(r"[\x20-\x7e]{1,256}")
_LINKS = ("sd_hash", "issuer_jwt_hash")


@dataclass(frozen=True, slots=True)
class VerifiedMandate:
    """A mandate chain that passed every check, and what it bounds."""

    id: str  # SHA-256 hex of the signed part (header.payload) of the JWT carrying the mandate
    issuer: str  # kid of the trusted root key, or the x5c leaf subject (RFC 4514)
    vct: str
    holder_jkt: str  # RFC 7638 thumbprint of the mandate's cnf.jwk (the agent key)
    issued_at: int
    expires_at: int  # the least exp of the chain as presented
    # the least exp of the credential and the mandate (a closed agent hop's left out):
    # the same for every presentation of the mandate
    mandate_expires_at: int
    constraints: Constraints
    disclosed: Mapping[str, Any]  # the mandate item's claims, disclosures resolved
    hops: int
    presentation: str | None  # SHA-256 hex of the closed hop's signed part, or None
    nonce: str | None  # the closed agent hop's nonce
    # RFC 7638 thumbprint of the credential's cnf.jwk (the user key), None for a provider
    # root: the signer refuses a credential held by the agent's own key (self-delegation)
    user_jkt: str | None


def _time(claims: Mapping[str, Any], name: str, what: str) -> int | None:
    value = claims.get(name)
    if value is not None and type(value) is not int:
        raise E.credential(E.MALFORMED, f"{what}'s {name} is not an integer")
    return None if value is None else epoch(value, f"{what}'s {name}")


def _times(claims: Mapping[str, Any], now: int, what: str) -> int | None:
    """``exp`` of ``claims`` if any, after: ``iat`` and ``nbf`` not in the future, ``exp``
    not passed."""
    for name in ("iat", "nbf"):
        at = _time(claims, name, what)
        if at is not None and at > now + SKEW:
            raise E.mandate(E.NOT_YET_VALID, f"{what}'s {name} is in the future")
    exp = _time(claims, "exp", what)
    if exp is not None and exp <= now:
        raise E.mandate(E.EXPIRED, f"{what} expired")
    return exp


def _credential_expiry(root: Hop, now: int) -> None:
    """The credential's ``exp`` must be in its signed payload itself, never a selectively
    disclosed claim (a holder would withhold it once passed) nor absent."""
    exp = _time(root.payload, "exp", "the credential")
    if exp is None:
        raise E.credential(E.NO_EXPIRY, "the credential has no exp in its signed payload")
    if exp <= now:
        raise E.mandate(E.EXPIRED, "the credential expired")  # as every hop's expiry


def _kb_claims(claims: Mapping[str, Any], what: str) -> None:
    if type(claims.get("iat")) is not int:
        raise E.credential(E.MALFORMED, f"{what} has no iat")
    for name in ("aud", "nonce"):
        if not isinstance(claims.get(name), str):
            raise E.credential(E.MALFORMED, f"{what} has no {name}")
    if "cnf" in claims:
        raise E.credential(E.MALFORMED, f"{what} carries cnf outside its delegate payload")


def _delegated(claims: Mapping[str, Any], what: str) -> list[Any]:
    """The disclosed items of the hop's ``delegate_payload``."""
    items = claims.get("delegate_payload", [])
    if not isinstance(items, list):
        raise E.credential(E.MALFORMED, f"{what}'s delegate_payload is not an array")
    return [i for i in items if not is_withheld(i)]


def _mandate_item(claims: Mapping[str, Any], what: str) -> dict[str, Any]:
    shown = _delegated(claims, what)
    if len(shown) != 1 or not isinstance(shown[0], dict):
        raise E.credential(E.MALFORMED, f"{what} does not disclose exactly one mandate")
    return shown[0]


def _closed_hop(
    hop: Hop, mandate_hop: Hop, agent: ec.EllipticCurvePublicKey, **at: Any
) -> tuple[str, int | None]:
    """Checks the closed agent hop; returns its nonce and its exp."""
    now, audience, what = at["now"], at["audience"], f"the closed hop {hop.index}"
    check_header(hop, CLOSED_TYP)
    check_es256(hop, agent)
    check_link(hop, mandate_hop)
    claims = resolve(hop)
    _kb_claims(claims, what)
    exp = _times(claims, now, what)
    if claims["iat"] < now - CLOSED_MAX_AGE:
        raise E.mandate(E.EXPIRED, f"{what} was made more than {CLOSED_MAX_AGE} s ago")
    if claims["aud"] != audience:
        raise E.credential(E.LINK_INVALID, f"{what} is for another audience")
    if not _NONCE.fullmatch(claims["nonce"]):
        raise E.credential(E.MALFORMED, f"{what}'s nonce is not 1 to 256 printable ASCII")
    shown = _delegated(claims, what)
    if len(shown) > 1 or any(
        not isinstance(i, dict) or i.get("vct") != CLOSED_PAYMENT or "cnf" in i for i in shown
    ):
        raise E.credential(E.MALFORMED, f"{what} discloses something but one closed mandate")
    nonce: str = claims["nonce"]
    return nonce, exp


def _signed_digest(hop: Hop) -> str:
    """SHA-256 hex of what the hop's signature covers (``header.payload``).

    Not of the whole JWT: an ES256 signature (r, s) has a twin (r, n - s) that verifies
    too, so anyone holding a hop can spell it a second way; an id over the signature would
    give one mandate two ledgers, and a replayed closed hop a new hash. What was signed has
    one spelling (base64url is read canonically)."""
    return hashlib.sha256(hop.signing_input).hexdigest()


def _verify(
    chain: object, issuers: TrustedIssuers, now: int, options: Mapping[str, Any]
) -> VerifiedMandate:
    hops = parse_chain(chain, options["max_bytes"])
    root = hops[0]
    check_header(root, ROOT_TYPS)
    key, issuer, provider_root = root_key(root, issuers, now)
    check_es256(root, key)
    root_claims = resolve(root)
    expiries = [_times(root_claims, now, "the root hop")]
    user_jkt: str | None = None
    # An issuer is a provider root or a credential issuer, never both: a provider root's hop
    # is always read as the mandate hop, a credential issuer's never (whatever is withheld).
    if provider_root:
        if "delegate_payload" not in root_claims:
            raise E.credential(
                E.ISSUER_UNTRUSTED, f"the provider root {E.shown(issuer)} may sign only a mandate"
            )
        if any(link in root_claims for link in _LINKS):
            raise E.credential(E.LINK_INVALID, "the root hop links to nothing before it")
        if "cnf" in root_claims:
            raise E.credential(E.MALFORMED, "the root hop carries cnf outside its mandate")
        mandate_hop, claims = root, root_claims
    else:
        if "delegate_payload" in root_claims:
            raise E.credential(
                E.ISSUER_UNTRUSTED, f"{E.shown(issuer)} may not sign a mandate as root"
            )
        _credential_expiry(root, now)
        user, user_jkt = cnf_key(root_claims, "the credential")
        if len(hops) < 2:
            raise E.credential(E.MALFORMED, "the credential is followed by no mandate hop")
        mandate_hop = hops[1]
        check_header(mandate_hop, MANDATE_TYP)
        check_es256(mandate_hop, user)
        check_link(mandate_hop, root)
        claims = resolve(mandate_hop)
        _kb_claims(claims, "the mandate hop")
        expiries.append(_times(claims, now, "the mandate hop"))
    item = _mandate_item(claims, "the mandate hop")
    vct = item.get("vct")
    if not isinstance(vct, str) or vct not in options["vct"]:
        raise E.mandate(E.VCT_MISMATCH, f"the mandate's vct {E.shown(vct)} is not accepted")
    if "exp" not in item:
        raise E.mandate(E.NO_EXPIRY, "the mandate has no exp")
    expiries.append(_times(item, now, "the mandate"))
    agent, holder_jkt = cnf_key(item, "the mandate")
    issued_at = _time(item, "iat", "the mandate")
    issued_at = _time(claims, "iat", "the mandate hop") if issued_at is None else issued_at
    if issued_at is None:
        raise E.credential(E.MALFORMED, "neither the mandate nor its hop has an iat")
    bounds = constraints(item, options["decimals"])
    rest = hops[mandate_hop.index + 1 :]
    if len(rest) > 1:
        raise E.credential(E.MALFORMED, "only one closed agent hop may follow the mandate")
    mandate_ends = min(e for e in expiries if e is not None)  # without the closed hop's
    presentation = nonce = None
    if rest:
        nonce, exp = _closed_hop(rest[0], mandate_hop, agent, now=now, audience=options["audience"])
        presentation = _signed_digest(rest[0])
        expiries.append(exp)
    return VerifiedMandate(
        id=_signed_digest(mandate_hop),
        issuer=issuer,
        vct=vct,
        holder_jkt=holder_jkt,
        issued_at=issued_at,
        expires_at=min(e for e in expiries if e is not None),
        mandate_expires_at=mandate_ends,
        constraints=bounds,
        disclosed=strip(item),
        hops=len(hops),
        presentation=presentation,
        nonce=nonce,
        user_jkt=user_jkt,
    )


def verify_mandate(
    chain: str,
    issuers: TrustedIssuers,
    *,
    now: int,
    decimals: Callable[[str], int | None],
    vct: Collection[str] = (OPEN_PAYMENT,),
    audience: str = "paywarden",
    max_bytes: int = 65536,
) -> VerifiedMandate:
    """The mandate ``chain`` carries, verified against ``issuers`` at ``now`` (epoch
    seconds); ``decimals(currency)`` gives a known currency's decimals (None: unknown)."""
    options = {"vct": vct, "audience": audience, "max_bytes": max_bytes, "decimals": decimals}
    try:
        return _verify(chain, issuers, now, options)
    except MandateError:
        raise
    except (
        ValueError,
        TypeError,
        LookupError,
        ArithmeticError,
        RecursionError,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        # Fail closed on what the checks above did not foresee; the fuzz tests look for it.
        raise E.credential(
            E.MALFORMED, f"the chain cannot be read ({type(exc).__name__})"
        ) from None
