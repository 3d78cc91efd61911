"""AP2-shaped error receipts of refused mandates, signed by the audit key.

AP2 answers a mandate it will not act on with a verifier-signed JWT: ``iss`` (the
verifier), ``result`` ``error``, ``reference`` (a hash of the final SD-JWT of the chain,
made as ``sd_hash`` is), ``error`` (``invalid_credential``, ``invalid_mandate`` or
``unresolved_constraint``) and ``error_description``. The signer adds ``iat``, its own
reason code, the mandate's id when it has one and a ``typ`` of its own, and signs the
JWS with the audit key in the HSM (:meth:`paywarden.hsm.Hsm.sign_mandate_receipt`, a door
of its own: never a payment key). Any JOSE library checks it against the audit public
key. A receipt that cannot be signed now (the HSM is down) is left out: the refusal
stands without it.
"""

from __future__ import annotations

import hashlib
import logging

from paywarden.hsm import HsmError
from paywarden.hsm.audit_bodies import MANDATE_RECEIPT_TYPE
from paywarden.policy.vocabulary import Reason
from paywarden.signer.core.deps import Deps
from paywarden.signer.core.disclosure import agent_message
from paywarden.signer.core.refusals import RefusalBudget
from paywarden.signer.encoding import Json, b64url, jcs
from paywarden.signer.store.records import DecisionRecord, StoreError
from paywarden.verify.mandates import MandateCode

log = logging.getLogger("paywarden.signer")


def chain_reference(chain: str) -> str:
    """AP2's ``reference`` of a chain: SHA-256 over its final SD-JWT with its trailing
    ``~`` (as ``sd_hash`` is made), base64url."""
    last = chain.split("~~")[-1]
    if not last.endswith("~"):
        last += "~"
    return b64url(hashlib.sha256(last.encode("utf-8", "surrogatepass")).digest())


class MandateReceipts:
    def __init__(self, deps: Deps, issuer: str) -> None:
        self._deps = deps
        self._issuer = issuer
        # Each receipt costs an audit-key signature under the HSM's one lock: a caller's
        # receipts are drawn from a refusal budget, and past it left out.
        limits = deps.limits
        self._budget = RefusalBudget(limits.refusal_burst, limits.refusal_rate_per_second)

    def of_denial(self, reason: Reason, record: DecisionRecord) -> str | None:
        """The receipt of a Sign that its session's mandate denied (None for any other
        denial, or when the session cannot be read now): ``invalid_mandate``, naming the
        mandate."""
        if not reason.startswith("MANDATE_"):
            return None
        try:
            session = self._deps.store.get_session(record.session_id, record.created_at)
        except StoreError:
            return None  # the refusal stands; a receipt must name its mandate
        if session is None or session.mandate_id is None:
            return None
        # AP2's reference: a hash of the mandate; here the issuer-signed JWT's (its id).
        return self.refusal(
            MandateCode.INVALID_MANDATE,
            reason,
            agent_message(reason),  # the agent's fixed sentence, never the detail
            reference=b64url(bytes.fromhex(session.mandate_id)),
            mandate_id=session.mandate_id,
            asker=f"agent/{record.agent_id}",
        )

    def refusal(
        self,
        code: MandateCode,
        reason: Reason,
        message: str,
        *,
        reference: str | None,
        mandate_id: str | None,
        asker: str,
    ) -> str | None:
        """The compact JWS of an error receipt, or None when it cannot be signed now or
        ``asker`` spent its refusal budget."""
        now = self._deps.clock.now()
        if self._budget.exhausted(asker, now):
            return None
        self._budget.spend(asker, now)
        header = {"alg": "ES256", "kid": self._deps.audit.key, "typ": "JWT"}
        claims: dict[str, Json] = {
            "typ": MANDATE_RECEIPT_TYPE,
            "iss": self._issuer,
            "iat": self._deps.now(),
            "result": "error",
            "reference": reference,
            "error": str(code),
            "error_description": message,
            "reason": str(reason),
            "mandate_id": mandate_id,
        }
        signing_input = f"{b64url(jcs(header))}.{b64url(jcs(claims))}"
        try:
            signature = self._deps.hsm.sign_mandate_receipt(signing_input.encode("ascii"))
        except HsmError as exc:
            log.warning(
                "a mandate receipt could not be signed", extra={"error": type(exc).__name__}
            )
            return None
        return f"{signing_input}.{b64url(signature)}"
