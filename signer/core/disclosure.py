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

from paywarden.signer.errors import PaywardenError

GENERIC = "the request was refused; nothing was signed"

AGENT_MESSAGES: dict[str, str] = {
    # authentication / authorisation
    "NO_IDENTITY": "the caller presented no usable identity",
    "ROLE_NOT_ALLOWED": "this role may not make this call",
    "SESSION_AGENT_MISMATCH": "the session belongs to another agent",
    # input validation
    "FIELD_MISSING": "a required field is missing",
    "UNKNOWN_FIELD": "the request has a field this signer does not know",
    "MALFORMED_REQUEST": "the request is not a valid message",
    "AMOUNT_MALFORMED": "the amount is malformed",
    "AMOUNT_NOT_POSITIVE": "the amount must be greater than zero",
    "AMOUNT_TOO_PRECISE": "the amount has more decimals than the asset allows",
    "AMOUNT_TOO_LARGE": "the amount is too large",
    "STRING_TOO_LONG": "a text field is too long",
    "STRING_EMPTY": "a text field is empty",
    "STRING_CONTROL_CHAR": "a text field contains a control character",
    "STRING_INVALID": "a text field is invalid",
    "NONCE_MALFORMED": "the nonce is malformed",
    "UNKNOWN_ASSET": "the asset is not one this signer knows",
    "UNKNOWN_KEY": "the key is not a payment key of this signer",
    "SESSION_ID_MALFORMED": "the session id is malformed",
    # replay guard
    "EXPIRY_IN_PAST": "the payment's expiry is not in the future",
    "EXPIRY_TOO_FAR": "the payment's expiry is too far ahead",
    "EXPIRY_AFTER_SESSION": "the payment's expiry is after the session ends",
    "NONCE_REPLAYED": "this nonce was already used for a different request",
    # sessions
    "SESSION_NOT_FOUND": "no such session",
    "SESSION_CLOSED": "the session is closed",
    "SESSION_EXPIRED": "the session has expired",
    "SESSION_IN_EXPLORE_PHASE": "the session has no committed plan yet",
    "SESSION_NOT_EXPLORING": "the session is not in its explore phase",
    "SESSION_PLANNER_MISMATCH": "the session was opened by another planner",
    "BUDGET_INVALID": "the session budget is invalid",
    "TTL_INVALID": "the session lifetime is invalid",
    "PLAN_INVALID": "the plan is invalid",
    "SESSION_PACK_CHANGED": "the session's policy changed; ask for a new session",
    "FROZEN": "signing is frozen for this request",
    "RATE_LIMITED": "too many refused requests; slow down",
    "PAYMENT_WITHDRAWN": "the payment was withdrawn before it was signed; nothing was signed",
    "CLIENT_CERT_PROFILE": "the client certificate is not a client certificate of this signer",
    "SERVER_BUSY": "the signer is busy; retry later",
    "TOO_MANY_STREAMS": "too many open streams; close one and retry",
    "TOO_MANY_CALLS": "too many calls in flight; retry later",
    # approvals
    "APPROVAL_NOT_FOUND": "no such approval",
    "APPROVAL_NOT_PENDING": "the approval is not pending",
    "APPROVER_IS_REQUESTER": "an approver cannot approve its own request",
    "APPROVER_IS_PLANNER": "an approver cannot approve a payment in a session it opened",
    "APPROVAL_DENIED": "an approver denied the payment",
    "APPROVAL_EXPIRED": "the approval expired",
    # policy
    "NO_POLICY_PACK": "no policy applies to this agent",
    "POLICY_NO_RULE_ALLOWED": "the policy does not allow this payment",
    "BUDGET_EXCEEDED": "the payment would exceed the session's budget",
    "ASSET_NOT_IN_SESSION": "the session has no budget in this asset",
    "PAYEE_NOT_IN_SESSION": "the payee is not one of the session's payees",
    "ASSET_NOT_ALLOWED": "the policy does not allow this asset",
    "KEY_NOT_ALLOWED": "the policy does not allow this key for this asset",
    "PAYEE_DENYLISTED": "the policy does not allow this payee",
    "PAYEE_NOT_ALLOWED": "the policy does not allow this payee",
    "PAYEE_CONFUSABLE": "the policy does not allow this payee",
    "PAYEE_LOOKS_DENYLISTED": "the policy does not allow this payee",
    "PAYEE_NOT_ASCII": "the policy does not allow this payee",
    "PAYEE_NOT_CANONICAL": "the payee is not in its canonical spelling",
    "FIRST_PAYMENT_DENIED": "the policy does not allow a first payment to this payee",
    "AMOUNT_ABOVE_MAX": "the amount is above what the policy allows for one payment",
    "DAILY_LIMIT_EXCEEDED": "the payment would exceed the agent's daily limit",
    "ROLLING_LIMIT_EXCEEDED": "the payment would exceed the agent's 24-hour limit",
    "VELOCITY_EXCEEDED": "too many payments in a short time",
    "SESSION_DIVERSITY_EXCEEDED": "too many distinct payees in this session",
    "DAILY_DIVERSITY_EXCEEDED": "too many distinct payees today",
    "OUTSIDE_ALLOWED_HOURS": "payments are not allowed at this time",
    "PLAN_NO_MATCH": "the payment is not covered by the session's plan",
    "PLAN_REQUIRED": "the policy requires a plan-bound session",
    "BREAKER_TRIPPED": "the agent's circuit breaker stopped this payment",
    # infrastructure
    "HSM_UNAVAILABLE": "the HSM is unavailable; nothing was signed (retry the same request)",
    "STORE_UNAVAILABLE": "the signer cannot record decisions now; nothing was signed",
    "DEADLINE_EXCEEDED": "the call's deadline passed; nothing was signed",
    "CALL_CANCELLED": "the caller cancelled the call; nothing was signed",
    "SHUTTING_DOWN": "the signer is stopping; nothing was signed (retry elsewhere or later)",
    "INTERNAL": "internal error; nothing was signed",
}


def agent_message(reason: str) -> str:
    return AGENT_MESSAGES.get(str(reason), GENERIC)


def agent_facing(error: PaywardenError) -> None:
    """Turns the refusal into what the agent sees: same type, reason code, decision id
    and audit record; the message replaced by the fixed sentence for its reason code."""
    error.message = agent_message(error.reason)
    error.args = (error.message,)
