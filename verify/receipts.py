"""Offline check of a signed receipt (``Signer.GetReceipt``) against the audit public key.

A receipt says what the signer answered one request (allowed, denied, held or refused). Its
body is RFC 8785 JSON with ``typ`` ``paywarden.receipt.v1`` (a checkpoint's is
``paywarden.checkpoint.v1``: one can never pass for the other) signed ES256 by the audit key,
which never signs a payment. Once a checkpoint covers the receipt's audit record, the receipt
comes with that checkpoint and the record's RFC 9162 inclusion proof, from the body's leaf
hash to the checkpoint's signed root.

The document checked is the ``GetReceiptResponse`` in the proto3 JSON mapping with the field
names of the ``.proto`` (``paywarden receipt --out FILE`` writes it). :func:`verify_receipt`
raises :class:`ReceiptInvalid` with a :class:`ReceiptFailure` code on the first thing wrong;
it never returns a bool to forget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from paywarden.verify.errors import PaymentRejected
from paywarden.verify.strict_json import b64url_decode

RECEIPT_TYPE = "paywarden.receipt.v1"
CHECKPOINT_TYPE = "paywarden.checkpoint.v1"

# Every receipt body holds exactly these keys (a closed schema: nothing unsigned slips in).
RECEIPT_FIELDS = frozenset(
    {
        "typ",
        "kid",
        "action",
        "decision_id",
        "request_hash",
        "outcome",
        "reason",
        "approval",
        "pack_sha256",
        "seq",
        "leaf",
        "agent",
        "payee",
        "time",
    }
)
_INT_FIELDS = frozenset({"seq", "time"})
_CHECKPOINT_FIELDS = frozenset({"typ", "size", "root", "time", "kid"})


class ReceiptFailure(StrEnum):
    """Why a receipt does not verify: one code per check."""

    MALFORMED = "RECEIPT_MALFORMED"  # not the document's shape (JSON, fields, encodings)
    AUDIT_KEY_INVALID = "AUDIT_KEY_INVALID"  # the given key is not a P-256 public key
    BAD_SIGNATURE = "RECEIPT_BAD_SIGNATURE"  # the audit key did not sign this body
    WRONG_TYPE = "RECEIPT_WRONG_TYPE"  # typ is not paywarden.receipt.v1
    NOT_CANONICAL = "RECEIPT_NOT_CANONICAL"  # the body is not its RFC 8785 form
    KEY_ID_MISMATCH = "RECEIPT_KEY_ID_MISMATCH"  # key_id differs from the body's kid
    CHECKPOINT_BAD_SIGNATURE = "CHECKPOINT_BAD_SIGNATURE"  # the audit key did not sign it
    CHECKPOINT_MALFORMED = "CHECKPOINT_MALFORMED"  # its body or fields disagree
    CHECKPOINT_DOES_NOT_COVER = "CHECKPOINT_DOES_NOT_COVER"  # its size is below the seq
    INCLUSION_PROOF_INVALID = "INCLUSION_PROOF_INVALID"  # the path does not reach its root
    NOT_SEALED = "RECEIPT_NOT_SEALED"  # no checkpoint, and the caller asked for one


class ReceiptInvalid(Exception):
    """The receipt does not verify: ``reason`` says which check failed."""

    def __init__(self, reason: ReceiptFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SealedBy:
    """The checkpoint that covers a verified receipt's record."""

    size: int
    root: str  # hex
    time: int
    key_id: str


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a verified receipt's signed body says, and the checkpoint that seals it."""

    body: Mapping[str, str | int]
    sealed_by: SealedBy | None

    @property
    def seq(self) -> int:
        return int(self.body["seq"])

    @property
    def decision_id(self) -> str:
        return str(self.body["decision_id"])

    @property
    def outcome(self) -> str:
        return str(self.body["outcome"])

    @property
    def reason(self) -> str:
        return str(self.body["reason"])


def load_audit_key(pem: bytes | str) -> ec.EllipticCurvePublicKey:
    """The audit public key from SPKI PEM; :class:`ReceiptInvalid` if it is not P-256."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ReceiptInvalid(
            ReceiptFailure.AUDIT_KEY_INVALID, f"not a PEM public key: {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ReceiptInvalid(ReceiptFailure.AUDIT_KEY_INVALID, "the audit key is not P-256")
    return key


def parse_receipt_document(text: str | bytes) -> Mapping[str, Any]:
    """The JSON document of a ``GetReceiptResponse``; :class:`ReceiptInvalid` if not JSON."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeError) as exc:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "the document is not a JSON object")
    return doc


def verify_receipt(
    document: Mapping[str, Any],
    audit_key: ec.EllipticCurvePublicKey,
    *,
    require_sealed: bool = False,
) -> VerifiedReceipt:
    """Checks a receipt document (see the module's docstring) against ``audit_key``.

    The body's signature, ``typ``, canonical form and fields, then, when the document
    carries a checkpoint: its signature, its signed body, that its size covers the
    record's seq, and the inclusion proof from the body's leaf hash to its root. With
    ``require_sealed`` a receipt without a checkpoint fails (``RECEIPT_NOT_SEALED``):
    anyone can strip the checkpoint off a sealed receipt."""
    receipt = _object(document.get("receipt"), "receipt")
    body_text = _string(receipt, "body")
    key_id = _string(receipt, "key_id")
    signature = _string(receipt, "signature")
    if not _signed_by(audit_key, body_text, signature, ReceiptFailure.MALFORMED):
        raise ReceiptInvalid(ReceiptFailure.BAD_SIGNATURE, "the audit key did not sign the body")
    body = _receipt_body(body_text)
    if body["kid"] != key_id:
        raise ReceiptInvalid(
            ReceiptFailure.KEY_ID_MISMATCH, f"key_id {key_id!r} but the body's kid {body['kid']!r}"
        )
    checkpoint = document.get("checkpoint")
    if checkpoint is None:
        if document.get("inclusion_proof"):
            raise ReceiptInvalid(ReceiptFailure.MALFORMED, "an inclusion proof without checkpoint")
        if require_sealed:
            raise ReceiptInvalid(ReceiptFailure.NOT_SEALED, "no checkpoint covers the record")
        return VerifiedReceipt(body, None)
    sealed = _checkpoint(_object(checkpoint, "checkpoint"), audit_key)
    seq = int(body["seq"])
    if seq > sealed.size:
        raise ReceiptInvalid(
            ReceiptFailure.CHECKPOINT_DOES_NOT_COVER,
            f"record {seq} is not in the checkpoint's tree of {sealed.size}",
        )
    proof = _hex_list(document.get("inclusion_proof", []))
    leaf = _hex32(str(body["leaf"]), ReceiptFailure.MALFORMED, "the body's leaf")
    root = _hex32(sealed.root, ReceiptFailure.CHECKPOINT_MALFORMED, "the checkpoint's root")
    if not verify_inclusion(seq - 1, sealed.size, leaf, proof, root):
        raise ReceiptInvalid(
            ReceiptFailure.INCLUSION_PROOF_INVALID,
            f"the proof does not lead from record {seq}'s leaf to the root of {sealed.size}",
        )
    return VerifiedReceipt(body, sealed)


# -- RFC 9162 section 2.1.3.2 --------------------------------------------------------------


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Does ``proof`` (the audit path) lead from leaf ``index`` (0-based) of a tree of
    ``size`` leaves, whose leaf hash is ``leaf``, to ``root``? RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# -- the parts -----------------------------------------------------------------------------


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, f"{name} is not a JSON object")
    return value


def _string(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, f"{name} is missing or not a string")
    return value


def _signed_by(
    key: ec.EllipticCurvePublicKey, body: str, signature: str, malformed: ReceiptFailure
) -> bool:
    """ES256: base64url r||s over SHA-256 of the body's UTF-8 bytes. A signature not in
    canonical unpadded base64url (``+``, ``/``, padding, any other character) or a body
    that is no UTF-8 text (a lone surrogate) is ``malformed``, not merely unsigned."""
    try:
        raw = b64url_decode(signature, "signature")
    except PaymentRejected:
        raise ReceiptInvalid(malformed, "the signature is not canonical base64url") from None
    try:
        data = body.encode("utf-8")
    except UnicodeEncodeError:
        raise ReceiptInvalid(malformed, "the body is not UTF-8 text (a lone surrogate)") from None
    if len(raw) != 64:
        return False
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _no_float(text: str) -> Any:
    raise ValueError(f"a number that is not an integer: {text}")


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json keeps the last: one body, two readings
            raise ValueError(f"the member {key!r} is repeated")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(
    object_pairs_hook=_once, parse_float=_no_float, parse_constant=_no_float
)


def _canonical(value: Mapping[str, Any]) -> str:
    """RFC 8785 for an object of ASCII keys whose values are strings and safe integers
    (checked by the caller): sorted keys, no whitespace, JSON's minimal escapes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _receipt_body(text: str) -> Mapping[str, str | int]:
    try:
        body = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "the body is not a JSON object")
    if body.get("typ") != RECEIPT_TYPE:
        raise ReceiptInvalid(
            ReceiptFailure.WRONG_TYPE, f"typ {body.get('typ')!r}, not {RECEIPT_TYPE!r}"
        )
    if set(body) != RECEIPT_FIELDS:
        missing, extra = sorted(RECEIPT_FIELDS - set(body)), sorted(set(body) - RECEIPT_FIELDS)
        raise ReceiptInvalid(
            ReceiptFailure.MALFORMED, f"body fields: missing {missing}, unknown {extra}"
        )
    for name, value in body.items():
        if name in _INT_FIELDS:
            ok = type(value) is int and 0 <= value < 2**53
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ReceiptInvalid(ReceiptFailure.MALFORMED, f"the body's {name} has a wrong type")
    if _canonical(body) != text:
        raise ReceiptInvalid(ReceiptFailure.NOT_CANONICAL, "the body is not its RFC 8785 form")
    return body


def _int(value: Any) -> int | None:
    """An int64 in the proto3 JSON mapping: a decimal string (or a plain integer)."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    return None


def _checkpoint(cp: Mapping[str, Any], key: ec.EllipticCurvePublicKey) -> SealedBy:
    body_text = _string(cp, "body")
    signature = _string(cp, "signature")
    if not _signed_by(key, body_text, signature, ReceiptFailure.CHECKPOINT_MALFORMED):
        raise ReceiptInvalid(
            ReceiptFailure.CHECKPOINT_BAD_SIGNATURE, "the audit key did not sign the checkpoint"
        )
    try:
        body = _DECODER.decode(body_text)
    except (ValueError, RecursionError):
        body = None
    if (
        not isinstance(body, dict)
        or set(body) != _CHECKPOINT_FIELDS
        or body["typ"] != CHECKPOINT_TYPE
        or type(body["size"]) is not int
        or type(body["time"]) is not int
        or not isinstance(body["root"], str)
        or not isinstance(body["kid"], str)
    ):
        raise ReceiptInvalid(
            ReceiptFailure.CHECKPOINT_MALFORMED, "the checkpoint's body is not a checkpoint"
        )
    # The unsigned fields beside the body must say what it says (or be absent).
    for field, signed in (("tree_size", "size"), ("time", "time")):
        if field in cp and _int(cp[field]) != body[signed]:
            raise ReceiptInvalid(
                ReceiptFailure.CHECKPOINT_MALFORMED, f"{field} disagrees with the signed body"
            )
    for field, signed in (("root_hash", "root"), ("key_id", "kid")):
        if field in cp and cp[field] != body[signed]:
            raise ReceiptInvalid(
                ReceiptFailure.CHECKPOINT_MALFORMED, f"{field} disagrees with the signed body"
            )
    return SealedBy(body["size"], body["root"], body["time"], body["kid"])


def _hex32(text: str, failure: ReceiptFailure, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32 or raw.hex() != text:
        raise ReceiptInvalid(failure, f"{what} is not 32 bytes of lower-case hex")
    return raw


def _hex_list(value: Any) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "inclusion_proof is not a list of hex")
    return [_hex32(h, ReceiptFailure.INCLUSION_PROOF_INVALID, "a proof hash") for h in value]
