"""SD-JWT hops of a mandate chain, read strictly (RFC 9901 as AP2's Delegate SD-JWT uses it).

A hop is ``<issuer-signed JWT>~<disclosure>~...~<disclosure>~``; a chain joins hops with
``~~``. Nothing here trusts a key: :func:`parse_chain` splits and decodes, :func:`check_es256`
verifies a hop's signature with the key the caller chose, :func:`resolve` replaces the digests
the presented disclosures answer, :func:`check_link` compares a hop's ``sd_hash`` /
``issuer_jwt_hash`` with the hop before it. Every failure is a :class:`MandateError`.

Resolution keeps what was withheld visible: a digest no disclosure answers stays where it was
(``{"...": d}`` in an array, the ``_sd`` member with the unanswered digests in an object), so
the caller decides where a withheld part is harmless; :func:`strip` removes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from paywarden.verify import mandate_errors as E
from paywarden.verify.errors import PaymentRejected
from paywarden.verify.strict_json import b64url_decode, b64url_encode

ALGORITHM = "ES256"
SD_ALG = "sha-256"
MAX_HOPS = 3
MAX_DEPTH = 24  # nesting of objects and arrays in a payload or a disclosure
ARRAY_DIGEST = "..."
SD = "_sd"
_HEADER_MEMBERS = frozenset({"alg", "typ", "kid", "x5c"})  # x5c: the root's only
_ASCII = re.compile(r"[\x21-\x7e]*")


def _refuse_constant(text: str) -> object:
    raise ValueError(f"{text} is not allowed")


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the member {E.shown(key)} appears twice")
        out[key] = value
    return out


def loads(data: bytes, what: str, reason: str = E.MALFORMED) -> object:
    """``data`` as UTF-8 JSON: each member of an object once, numbers with a fraction or an
    exponent as exact :class:`Decimal`, no NaN or Infinity."""
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_pairs,
            parse_float=Decimal,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise E.credential(
            reason, f"the {what} is not strict JSON: {E.cut(str(exc), 2 * E.SHOWN)}"
        ) from None


def b64url(text: str, what: str, reason: str = E.MALFORMED) -> bytes:
    try:
        return b64url_decode(text, what)
    except PaymentRejected:
        raise E.credential(reason, f"the {what} is not canonical base64url") from None


def digest(text: str) -> str:
    """The SD-JWT digest (and ``sd_hash``) of ``text``: base64url SHA-256 of its ASCII."""
    return b64url_encode(hashlib.sha256(text.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop as presented: ``text`` with its trailing ``~`` (what ``sd_hash`` covers),
    ``jwt`` the compact issuer-signed JWT (what ``issuer_jwt_hash`` and a mandate id cover)."""

    index: int
    text: str
    jwt: str
    header: dict[str, Any]
    payload: dict[str, Any]
    disclosures: tuple[str, ...]
    signing_input: bytes
    signature: bytes


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise E.credential(E.MALFORMED, f"the {what} is not a JSON object")
    return value


def _hop(index: int, text: str) -> Hop:
    parts = text.split("~")
    if len(parts) < 2 or parts[-1] != "":
        raise E.credential(E.MALFORMED, f"hop {index} does not end with '~' (no key-binding JWT)")
    jwt, disclosures = parts[0], tuple(parts[1:-1])
    if any(not d for d in disclosures):
        raise E.credential(E.MALFORMED, f"hop {index} has an empty disclosure")
    if any("." in d for d in disclosures):
        raise E.credential(E.MALFORMED, f"hop {index} holds a key-binding JWT")
    segments = jwt.split(".")
    if len(segments) != 3:
        raise E.credential(E.MALFORMED, f"hop {index}'s JWT is not three base64url parts")
    what = f"hop {index}'s"
    header = _object(loads(b64url(segments[0], f"{what} header"), f"{what} header"), what)
    payload = _object(loads(b64url(segments[1], f"{what} payload"), f"{what} payload"), what)
    signature = b64url(segments[2], f"{what} signature", E.SIGNATURE_INVALID)
    return Hop(
        index,
        text,
        jwt,
        header,
        payload,
        disclosures,
        f"{segments[0]}.{segments[1]}".encode("ascii"),
        signature,
    )


def parse_chain(chain: object, max_bytes: int) -> list[Hop]:
    """The hops of ``chain`` (1 to 3, joined by ``~~``), each decoded but not trusted."""
    if not isinstance(chain, str):
        raise E.credential(E.MALFORMED, "the mandate chain is not a string")
    if len(chain) > max_bytes or not _ASCII.fullmatch(chain):
        raise E.credential(
            E.MALFORMED, f"the mandate chain is not printable ASCII of at most {max_bytes} bytes"
        )
    segments = chain.split("~~")
    if not 1 <= len(segments) <= MAX_HOPS:
        raise E.credential(E.MALFORMED, f"a mandate chain has 1 to {MAX_HOPS} hops")
    texts = [s + "~" for s in segments[:-1]] + [segments[-1]]
    return [_hop(i, t) for i, t in enumerate(texts)]


def check_header(hop: Hop, typs: frozenset[str]) -> None:
    """``alg`` exactly ES256, ``typ`` one of ``typs``, no header member but alg/typ/kid, and
    x5c on the root only (``crit`` and every other key-locating member refused)."""
    alg = hop.header.get("alg")
    if alg != ALGORITHM:
        raise E.credential(E.SIGNATURE_INVALID, f"hop {hop.index}: alg {E.shown(alg)} is not ES256")
    allowed = _HEADER_MEMBERS if hop.index == 0 else _HEADER_MEMBERS - {"x5c"}
    extra = sorted(set(hop.header) - allowed)
    if extra:
        raise E.credential(
            E.MALFORMED, f"hop {hop.index}: header members not allowed: {E.shown(extra)}"
        )
    typ = hop.header.get("typ")
    if not isinstance(typ, str) or typ not in typs:
        raise E.credential(
            E.MALFORMED, f"hop {hop.index}: typ {E.shown(typ)} is not one of {sorted(typs)}"
        )


def check_es256(hop: Hop, key: ec.EllipticCurvePublicKey) -> None:
    """The hop's ES256 signature (raw r || s) with ``key``."""
    if len(hop.signature) != 64:
        raise E.credential(E.SIGNATURE_INVALID, f"hop {hop.index}: the signature is not 64 bytes")
    r = int.from_bytes(hop.signature[:32], "big")
    s = int.from_bytes(hop.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), hop.signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise E.credential(
            E.SIGNATURE_INVALID, f"hop {hop.index}: the signature does not verify"
        ) from None


def check_sd_alg(hop: Hop) -> None:
    alg = hop.payload.get("_sd_alg", SD_ALG)
    if alg != SD_ALG:
        raise E.credential(
            E.DISCLOSURE_INVALID, f"hop {hop.index}: _sd_alg {E.shown(alg)} not sha-256"
        )


def check_link(hop: Hop, previous: Hop) -> None:
    """Exactly one of ``sd_hash`` (over the previous hop as presented, trailing ``~``
    included) and ``issuer_jwt_hash`` (over its issuer-signed JWT), and it matches."""
    check_sd_alg(previous)
    claims = [c for c in ("sd_hash", "issuer_jwt_hash") if c in hop.payload]
    if len(claims) != 1:
        raise E.credential(
            E.LINK_INVALID, f"hop {hop.index} has not exactly one of sd_hash, issuer_jwt_hash"
        )
    expected = digest(previous.text if claims[0] == "sd_hash" else previous.jwt)
    if hop.payload[claims[0]] != expected:
        raise E.credential(
            E.LINK_INVALID, f"hop {hop.index}'s {claims[0]} is not that of hop {previous.index}"
        )


class _Resolver:
    def __init__(self, hop: Hop) -> None:
        self.hop = hop
        self.by_digest: dict[str, list[Any]] = {}
        self.used: set[str] = set()
        self.seen: set[str] = set()
        for text in hop.disclosures:
            d = digest(text)
            if d in self.by_digest:
                raise self._bad("a disclosure is presented twice")
            self.by_digest[d] = self._disclosure(text)

    def _bad(self, message: str) -> E.MandateError:
        return E.credential(E.DISCLOSURE_INVALID, f"hop {self.hop.index}: {message}")

    def _disclosure(self, text: str) -> list[Any]:
        raw = b64url(text, "disclosure", E.DISCLOSURE_INVALID)
        value = loads(raw, "disclosure", E.DISCLOSURE_INVALID)
        if not isinstance(value, list) or len(value) not in (2, 3):
            raise self._bad("a disclosure is not a JSON array of 2 or 3")
        if not isinstance(value[0], str):
            raise self._bad("a disclosure's salt is not a string")
        if len(value) == 3 and (not isinstance(value[1], str) or value[1] in (SD, ARRAY_DIGEST)):
            raise self._bad("a disclosure's claim name is not allowed")
        return value

    def _claim(self, d: object, size: int) -> list[Any] | None:
        if not isinstance(d, str):
            raise self._bad("a digest is not a string")
        if d in self.seen:
            raise self._bad("a digest appears twice")
        self.seen.add(d)
        found = self.by_digest.get(d)
        if found is None:
            return None
        if len(found) != size:
            kind = "an object property" if size == 3 else "an array element"
            raise self._bad(f"a disclosure is not {kind} where its digest is")
        self.used.add(d)
        return found

    def value(self, value: object, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise self._bad("the payload nests too deep")
        if isinstance(value, dict):
            return self._obj(value, depth)
        if isinstance(value, list):
            return [self._element(v, depth) for v in value]
        return value

    def _element(self, value: object, depth: int) -> object:
        if isinstance(value, dict) and ARRAY_DIGEST in value:
            if len(value) != 1:
                raise self._bad("an array digest object has other members")
            found = self._claim(value[ARRAY_DIGEST], 2)
            return value if found is None else self.value(found[1], depth + 1)
        return self.value(value, depth + 1)

    def _obj(self, value: dict[str, Any], depth: int) -> dict[str, Any]:
        if ARRAY_DIGEST in value:
            raise self._bad("an object outside an array has the member '...'")
        out = {k: self.value(v, depth + 1) for k, v in value.items() if k != SD}
        digests = value.get(SD, [])
        if not isinstance(digests, list):
            raise self._bad("_sd is not an array")
        withheld = []
        for d in digests:
            found = self._claim(d, 3)
            if found is None:
                withheld.append(d)
            elif found[1] in out:
                raise self._bad(f"the disclosed claim {E.shown(found[1])} is already in its object")
            else:
                out[found[1]] = self.value(found[2], depth + 1)
        if withheld:
            out[SD] = withheld
        return out


def resolve(hop: Hop) -> dict[str, Any]:
    """The hop's payload with every presented disclosure in place of its digest and
    ``_sd_alg`` removed; refused if a disclosure is malformed, presented twice, answers no
    digest (directly or inside another disclosure), or a digest appears twice."""
    check_sd_alg(hop)
    resolver = _Resolver(hop)
    payload = {k: v for k, v in hop.payload.items() if k != "_sd_alg"}
    out = resolver.value(payload, 0)
    if set(resolver.by_digest) - resolver.used:
        raise resolver._bad("a disclosure answers no digest of the hop")
    assert isinstance(out, dict)
    if _has_sd_alg(out):
        raise resolver._bad("_sd_alg is only allowed at the top of the payload")
    return out


def _has_sd_alg(value: object) -> bool:
    if isinstance(value, dict):
        return "_sd_alg" in value or any(_has_sd_alg(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_sd_alg(v) for v in value)
    return False


def is_withheld(value: object) -> bool:
    """An array element no disclosure answered (``{"...": d}`` after :func:`resolve`)."""
    return isinstance(value, dict) and set(value) == {ARRAY_DIGEST}


def strip(value: object) -> Any:
    """``value`` without what was withheld: the disclosed claims only."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != SD}
    if isinstance(value, list):
        return [strip(v) for v in value if not is_withheld(v)]
    return value


def as_mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None
