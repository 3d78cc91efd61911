"""Signed receipts of what the signer answered a Sign (``Signer.GetReceipt``).

A receipt is made from the answer's audit record itself, read by its sequence number
(a decision's through the ``decision_audit`` index: one probe, no scan): the record's
action, decision id, outcome, reason code, deciding pack's hash, agent and time, its
RFC 9162 leaf hash and, for a decision, the request hash of its row. The body is RFC
8785 JSON with ``typ`` ``paywarden.receipt.v1``, signed by the audit key in the HSM
(:meth:`paywarden.hsm.Hsm.sign_receipt`; never a payment key). Once a checkpoint
covers the record, the receipt comes with the newest checkpoint and the inclusion
proof. :mod:`paywarden.verify.receipts` checks one offline.

Who may see which receipt: an agent its own answers, a payee the answers about a payment
that names it and was signed (its decision, and a retry that collected the signature
after an approval), approvers and operators all. Anything else is answered exactly like
a record that does not exist (RECEIPT_NOT_FOUND), so that asking teaches nothing.

A record's receipt body is the same whenever it is asked for (the record's own time, not
the time of asking), so the audit key signs each body once: the signature is kept in a
bounded in-process LRU keyed by the body's SHA-256 and reused, and asking again costs no
HSM signature (GetReceipt is open to payees, outside parties; the HSM serves Sign under
the same lock). The checkpoint and its proof are read fresh on every ask.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from paywarden.hsm import HsmError
from paywarden.policy.vocabulary import ApprovalStatus
from paywarden.signer.auditlog import merkle
from paywarden.signer.core.checkpoints import Checkpoints
from paywarden.signer.core.deps import Deps, store_call
from paywarden.signer.encoding import b64url, jcs
from paywarden.signer.errors import Forbidden, InvalidInput, NotFound, Reason, Unavailable
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import Checkpoint, DecisionAudit, InvariantBroken
from paywarden.verify.receipts import RECEIPT_FIELDS, RECEIPT_TYPE

# The audit records that answer a Sign: a decision, a refusal before any decision, and a
# retry answered from an earlier decision.
DECISION, REFUSAL, RETRY = "sign.decision", "sign.refused", "sign.retry"
REFUSED = "refused"  # a receipt's outcome for a refusal that no decision recorded
_MAY_ASK = frozenset({Role.AGENT, Role.PAYEE, Role.APPROVER, Role.OPERATOR})
SIGNATURES_KEPT = 4096  # receipt signatures reused (64 bytes each, keyed by 32)


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    body: str  # the signed RFC 8785 JSON
    signature: str  # base64url r||s (ES256) by the audit key
    key_id: str  # the audit key
    checkpoint: Checkpoint | None  # the newest checkpoint, when it covers the record
    proof: list[bytes]  # the record's audit path in that checkpoint's tree
    audit_public_key_pem: str


def not_found() -> NotFound:
    """The one answer for an unknown record and one the caller may not see."""
    return NotFound(Reason.RECEIPT_NOT_FOUND, "no such decision")


class SignatureCache:
    """The audit key's signatures of receipt bodies by the body's SHA-256, the most
    recently used ``size`` of them (thread-safe)."""

    def __init__(self, size: int = SIGNATURES_KEPT) -> None:
        self._size = size
        self._kept: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            signature = self._kept.get(digest)
            if signature is not None:
                self._kept.move_to_end(digest)
            return signature

    def put(self, digest: bytes, signature: bytes) -> None:
        with self._lock:
            self._kept[digest] = signature
            self._kept.move_to_end(digest)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)


class Receipts:
    def __init__(self, deps: Deps, checkpoints: Checkpoints) -> None:
        self._deps = deps
        self._store = deps.store
        self._checkpoints = checkpoints
        self._signatures = SignatureCache()

    def receipt(
        self, caller: Principal, *, decision_id: str | None = None, seq: int | None = None
    ) -> SignedReceipt:
        """The receipt of a decision (by its id) or of a Sign's audit record (by seq)."""
        if caller.role not in _MAY_ASK:
            raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {caller.role} may not do this")
        row: DecisionAudit | None = None
        if decision_id is not None:
            row = store_call(lambda: self._store.decision_audit(decision_id))
            if row is None or row.seq is None:
                raise not_found()
            seq = row.seq
        if seq is None:
            raise InvalidInput(Reason.FIELD_MISSING, "give a decision_id or an audit_seq")
        head, _ = store_call(self._store.audit_head)
        if not 1 <= seq <= head:
            raise not_found()
        wanted = seq
        text = store_call(lambda: self._store.audit_record(wanted))
        record = json.loads(text)
        body = _body(record, text, self._deps.audit.key)
        if body is None:
            raise not_found()
        named = str(body["decision_id"])
        if decision_id is not None and named != decision_id:
            raise InvariantBroken(f"decision {decision_id} is indexed to record {seq}")
        if row is None and named:
            row = store_call(lambda: self._store.decision_audit(named))
        if row is not None:  # the decision's row: its request hash and its payee
            body["request_hash"], body["payee"] = row.request_hash, row.payee
        if not _may_see(caller, record, row):
            raise not_found()
        return self._signed(body, seq)

    def _signed(self, body: dict[str, str | int], seq: int) -> SignedReceipt:
        if set(body) != RECEIPT_FIELDS:  # the verifier's closed schema
            raise InvariantBroken(f"a receipt body with fields {sorted(body)}")
        text = jcs(body)
        signature = self._signature(text)
        checkpoint = store_call(self._store.last_checkpoint)
        proof: list[bytes] = []
        if checkpoint is not None and checkpoint.size >= seq:
            included = self._checkpoints.inclusion_proof(seq, checkpoint.size)
            if included.root.hex() != checkpoint.root or included.leaf.hex() != body["leaf"]:
                raise InvariantBroken(f"record {seq}'s proof does not reach checkpoint's root")
            proof = included.proof
        else:
            checkpoint = None
        return SignedReceipt(
            body=text.decode("utf-8"),
            signature=b64url(signature),
            key_id=str(body["kid"]),
            checkpoint=checkpoint,
            proof=proof,
            audit_public_key_pem=self._checkpoints.audit_public_key_pem(),
        )

    def _signature(self, text: bytes) -> bytes:
        """The audit key's signature of ``text``: the one made the first time, if kept."""
        digest = hashlib.sha256(text).digest()
        signature = self._signatures.get(digest)
        if signature is not None:
            self._deps.metrics.receipts.labels("reused").inc()
            return signature
        try:
            signature = self._deps.hsm.sign_receipt(text)
        except HsmError:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the HSM cannot sign a receipt now") from None
        self._signatures.put(digest, signature)
        self._deps.metrics.receipts.labels("signed").inc()
        return signature


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _body(record: dict[str, Any], text: str, kid: str) -> dict[str, str | int] | None:
    """The receipt's facts from the audit record (None: it answers no Sign). The request
    hash is added by the caller (it lives in the decision's row)."""
    action = record.get("action")
    actor = record.get("actor") or {}
    body: dict[str, str | int] = {
        "typ": RECEIPT_TYPE,
        "kid": kid,
        "action": _text(action),
        "seq": int(record["seq"]),
        "leaf": merkle.leaf_hash(text.encode("utf-8")).hex(),
        "time": int(record["time"]),
        "agent": _text(actor.get("id")) if actor.get("role") == Role.AGENT else "",
        "payee": "",
        "approval": "",
        "pack_sha256": "",
        "request_hash": "",
    }
    if action == DECISION:
        decision = record["decision"]
        body["decision_id"] = _text(decision.get("id"))
        body["outcome"] = _text(decision.get("outcome"))
        body["reason"] = _text(decision.get("reason"))
        body["pack_sha256"] = _text((decision.get("pack") or {}).get("sha256"))
        if record.get("approval_id"):  # held: an approval was asked for
            body["approval"] = ApprovalStatus.PENDING
    elif action == RETRY:
        body["decision_id"] = _text(record.get("decision_id"))
        body["outcome"] = _text(record.get("answer"))
        body["reason"] = _text(record.get("reason"))
        body["approval"] = _text(record.get("approval"))
    elif action == REFUSAL:
        body["decision_id"] = ""
        body["outcome"] = REFUSED
        body["reason"] = _text(record.get("reason"))
    else:
        return None
    return body


def _may_see(caller: Principal, record: dict[str, Any], row: DecisionAudit | None) -> bool:
    if caller.role in (Role.APPROVER, Role.OPERATOR):
        return True
    if caller.role is Role.AGENT:
        actor = record.get("actor") or {}
        return bool(actor.get("role") == Role.AGENT and actor.get("id") == caller.id)
    if caller.role is Role.PAYEE:  # a signed payment that names it, nothing else
        return row is not None and row.signed and row.payee == caller.id
    return False
