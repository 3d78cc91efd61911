"""What an agent is told when it is refused: its reason code and a fixed sentence.

Agents are untrusted (their reasoning may be prompt-injected), so nothing an
agent is told may describe the policy (which payees are allowed, what a deny
pattern says, where a limit or a breaker threshold lies) or people (an
approver's note, an operator's reason). The detailed message of a refusal goes
to the audit log and to the approvers' views; the agent gets the reason code
and the sentence for that code here, the same for every call. A reason code
missing from the table gets :data:`GENERIC`.
"""

from __future__ import annotations

from paywarden.signer.errors import PaywardenError, Reason

GENERIC = "the request was refused; nothing was signed"

AGENT_MESSAGES: dict[str, str] = {
    # authentication / authorisation
    Reason.NO_IDENTITY: "the caller presented no usable identity",
    Reason.ROLE_NOT_ALLOWED: "this role may not make this call",
    Reason.IDENTITY_REVOKED: "the caller's identity is revoked",
    Reason.SESSION_AGENT_MISMATCH: "the session belongs to another agent",
    # input validation
    Reason.FIELD_MISSING: "a required field is missing",
    Reason.UNKNOWN_FIELD: "the request has a field this signer does not know",
    Reason.MALFORMED_REQUEST: "the request is not a valid message",
    Reason.AMOUNT_MALFORMED: "the amount is malformed",
    Reason.AMOUNT_NOT_POSITIVE: "the amount must be greater than zero",
    Reason.AMOUNT_TOO_PRECISE: "the amount has more decimals than the asset allows",
    Reason.AMOUNT_TOO_LARGE: "the amount is too large",
    Reason.STRING_TOO_LONG: "a text field is too long",
    Reason.STRING_EMPTY: "a text field is empty",
    Reason.STRING_CONTROL_CHAR: "a text field contains a control character",
    Reason.STRING_INVALID: "a text field is invalid",
    Reason.NONCE_MALFORMED: "the nonce is malformed",
    Reason.UNKNOWN_ASSET: "the asset is not one this signer knows",
    Reason.UNKNOWN_KEY: "the key is not a payment key of this signer",
    Reason.X402_UNSUPPORTED: "the x402 scheme or version is not one this signer pays",
    Reason.X402_DOMAIN_MISMATCH: "the token's EIP-712 domain is not the one configured",
    Reason.KEY_NOT_ACTIVE: "the key version is not active; sign with the key's active version",
    Reason.SESSION_ID_MALFORMED: "the session id is malformed",
    # replay guard
    Reason.EXPIRY_IN_PAST: "the payment's expiry is not in the future",
    Reason.EXPIRY_TOO_FAR: "the payment's expiry is too far ahead",
    Reason.EXPIRY_AFTER_SESSION: "the payment's expiry is after the session ends",
    Reason.NONCE_REPLAYED: "this nonce was already used for a different request",
    # sessions
    Reason.SESSION_NOT_FOUND: "no such session",
    Reason.SESSION_CLOSED: "the session is closed",
    Reason.SESSION_EXPIRED: "the session has expired",
    Reason.SESSION_IN_EXPLORE_PHASE: "the session has no committed plan yet",
    Reason.SESSION_NOT_EXPLORING: "the session is not in its explore phase",
    Reason.SESSION_PLANNER_MISMATCH: "the session was opened by another planner",
    Reason.BUDGET_INVALID: "the session budget is invalid",
    Reason.TTL_INVALID: "the session lifetime is invalid",
    Reason.PLAN_INVALID: "the plan is invalid",
    Reason.SESSION_PACK_CHANGED: "the session's policy changed; ask for a new session",
    Reason.FROZEN: "signing is frozen for this request",
    Reason.RATE_LIMITED: "too many refused requests; slow down",
    Reason.PAYMENT_WITHDRAWN: "the payment was withdrawn before it was signed; nothing was signed",
    Reason.CLIENT_CERT_PROFILE: "the client certificate is not a client certificate of this signer",
    Reason.CLIENT_CERT_EXPIRED: "the client certificate has expired; renew it and reconnect",
    Reason.SERVER_BUSY: "the signer is busy; retry later",
    Reason.TOO_MANY_STREAMS: "too many open streams; close one and retry",
    Reason.TOO_MANY_CALLS: "too many calls in flight; retry later",
    # approvals
    Reason.APPROVAL_NOT_FOUND: "no such approval",
    Reason.APPROVAL_NOT_PENDING: "the approval is not pending",
    Reason.APPROVER_IS_REQUESTER: "an approver cannot approve its own request",
    Reason.APPROVER_IS_PLANNER: "an approver cannot approve a payment in a session it opened",
    Reason.APPROVAL_DENIED: "an approver denied the payment",
    Reason.APPROVAL_EXPIRED: "the approval expired",
    # policy
    Reason.NO_POLICY_PACK: "no policy applies to this agent",
    Reason.POLICY_NO_RULE_ALLOWED: "the policy does not allow this payment",
    Reason.BUDGET_EXCEEDED: "the payment would exceed the session's budget",
    Reason.ASSET_NOT_IN_SESSION: "the session has no budget in this asset",
    Reason.PAYEE_NOT_IN_SESSION: "the payee is not one of the session's payees",
    Reason.ASSET_NOT_ALLOWED: "the policy does not allow this asset",
    Reason.KEY_NOT_ALLOWED: "the policy does not allow this key for this asset",
    Reason.PAYEE_DENYLISTED: "the policy does not allow this payee",
    Reason.PAYEE_NOT_ALLOWED: "the policy does not allow this payee",
    Reason.PAYEE_CONFUSABLE: "the policy does not allow this payee",
    Reason.PAYEE_LOOKS_DENYLISTED: "the policy does not allow this payee",
    Reason.PAYEE_NOT_ASCII: "the policy does not allow this payee",
    Reason.PAYEE_NOT_CANONICAL: "the payee is not in its canonical spelling",
    Reason.FIRST_PAYMENT_DENIED: "the policy does not allow a first payment to this payee",
    Reason.AMOUNT_ABOVE_MAX: "the amount is above what the policy allows for one payment",
    Reason.DAILY_LIMIT_EXCEEDED: "the payment would exceed the agent's daily limit",
    Reason.ROLLING_LIMIT_EXCEEDED: "the payment would exceed the agent's 24-hour limit",
    Reason.VELOCITY_EXCEEDED: "too many payments in a short time",
    Reason.SESSION_DIVERSITY_EXCEEDED: "too many distinct payees in this session",
    Reason.DAILY_DIVERSITY_EXCEEDED: "too many distinct payees today",
    Reason.OUTSIDE_ALLOWED_HOURS: "payments are not allowed at this time",
    Reason.PLAN_NO_MATCH: "the payment is not covered by the session's plan",
    Reason.PLAN_REQUIRED: "the policy requires a plan-bound session",
    # mandates (a planner's OpenSession, and the payments of a session opened from one)
    Reason.MANDATE_MALFORMED: "the mandate chain is malformed",
    Reason.MANDATE_SIGNATURE_INVALID: "a signature of the mandate chain does not verify",
    Reason.MANDATE_ISSUER_UNTRUSTED: "the mandate chain is not rooted in a trusted issuer",
    Reason.MANDATE_LINK_INVALID: "a hop of the mandate chain is not bound to the one before",
    Reason.MANDATE_DISCLOSURE_INVALID: "a disclosure of the mandate chain is invalid",
    Reason.MANDATE_EXPIRED: "the mandate has expired",
    Reason.MANDATE_NOT_YET_VALID: "the mandate is not valid yet",
    Reason.MANDATE_NO_EXPIRY: "the mandate has no expiry",
    Reason.MANDATE_VCT_MISMATCH: "the mandate's type is not one this signer accepts",
    Reason.MANDATE_CONSTRAINT_UNKNOWN: "the mandate has a constraint this signer cannot enforce",
    Reason.MANDATE_CONSTRAINT_INVALID: "a constraint of the mandate is invalid",
    Reason.MANDATE_ALLOWLIST_WITHHELD: "the mandate's allow-list was presented without entries",
    Reason.MANDATE_UNBOUNDED: "the mandate bounds no total",
    Reason.MANDATES_NOT_CONFIGURED: "this signer takes no mandates",
    Reason.MANDATE_HOLDER_MISMATCH: "the mandate is not bound to this agent's key",
    Reason.MANDATE_SELF_DELEGATED: "the mandate's credential is held by an agent's key",
    Reason.MANDATE_REVOKED: "the mandate is revoked",
    Reason.MANDATE_MISMATCH: "the mandate was presented before on other terms",
    Reason.MANDATE_HOP_REPLAYED: "the agent's closed hop was presented before",
    Reason.MANDATE_AGENT_HOP_MISSING: "the mandate chain lacks the agent's closed hop",
    Reason.MANDATE_PAYEES_OUTSIDE_PACK: "the policy allows none of the mandate's payees",
    Reason.MANDATE_AMOUNT_OUT_OF_RANGE: "the amount is outside what the mandate allows",
    Reason.MANDATE_BUDGET_EXCEEDED: "the payment would exceed the mandate's budget",
    Reason.MANDATE_USES_EXHAUSTED: "the mandate's payments are used up",
    Reason.MANDATE_TOO_SOON: "the mandate does not allow another payment yet",
    Reason.MANDATE_NOT_YET_EXECUTABLE: "the mandate's execution date has not come",
    Reason.MANDATE_REFERENCE_MISMATCH: "the payment's reference is not the mandate's",
    Reason.SESSION_TTL_ABOVE_PACK: "the session lifetime is above what the policy allows",
    Reason.SESSION_BUDGET_ABOVE_PACK: "the session budget is above what the policy allows",
    Reason.BREAKER_TRIPPED: "the agent's circuit breaker stopped this payment",
    # infrastructure
    Reason.HSM_UNAVAILABLE: "the HSM is unavailable; nothing was signed (retry the same request)",
    Reason.STORE_UNAVAILABLE: "the signer cannot record decisions now; nothing was signed",
    Reason.DEADLINE_EXCEEDED: "the call's deadline passed; nothing was signed",
    Reason.CALL_CANCELLED: "the caller cancelled the call; nothing was signed",
    Reason.SHUTTING_DOWN: "the signer is stopping; nothing was signed (retry elsewhere or later)",
    Reason.INTERNAL: "internal error; nothing was signed",
    # policy reloads (operators only)
    Reason.POLICY_PACK_INVALID: "a policy pack is invalid; the packs in force are unchanged",
    Reason.RELOAD_NOT_FOUND: "no such policy reload",
    Reason.RELOAD_NOT_PENDING: "the policy reload is no longer pending",
    Reason.RELOAD_EXPIRED: "the policy reload expired; propose it again",
    Reason.RELOAD_STALE: "the packs in force changed since the reload was proposed",
    Reason.RELOAD_SAME_OPERATOR: "a second operator must confirm this policy reload",
    Reason.RELOAD_NOT_REVIEWED: "the set confirmed is not the one this reload would apply",
    # receipts
    Reason.RECEIPT_NOT_FOUND: "no such decision",
    Reason.PAYMENT_NOT_FOUND: "no signed payment with this decision id names the caller",
    Reason.KEY_REVOKED: "the key version that signed the payment was revoked",
    Reason.KEY_DESTROYED: "the key version that signed the payment was destroyed",
    Reason.PAYMENT_EXPIRED: "the payment is past its expiry",
    # The offline checks of paywarden.verify: the signer never refuses with these.
    Reason.JWS_MALFORMED: "the payment is not a compact JWS of JSON objects",
    Reason.JWS_NOT_CANONICAL: "the payment's header or payload is not RFC 8785 JSON",
    Reason.JWS_HEADER_NOT_ALLOWED: "the payment's header has a parameter not allowed",
    Reason.ALG_NOT_ALLOWED: "the payment's algorithm is not ES256",
    Reason.TYP_NOT_ALLOWED: "the payment's type is not a Paywarden payment",
    Reason.CLAIMS_INVALID: "the payment's claims are not those of a payment",
    Reason.BAD_SIGNATURE: "the payment's signature does not verify",
    Reason.WRONG_PAYEE: "the payment names another payee",
    Reason.PAYMENT_NOT_YET_VALID: "the payment was issued in the future",
    Reason.JWKS_INVALID: "the key set is not a usable JWKS",
}


def agent_message(reason: str) -> str:
    return AGENT_MESSAGES.get(str(reason), GENERIC)


def agent_facing(error: PaywardenError) -> None:
    """Turns the refusal into what the agent sees: same type, reason code, decision id
    and audit record; the message replaced by the fixed sentence for its reason code."""
    error.message = agent_message(error.reason)
    error.args = (error.message,)
