"""The words every layer shares: reason codes, outcomes, states, amounts, assets and
plan lines.

The bottom of the stack: pure values, no I/O, nothing imported from the rest of
Paywarden. A reason code or an outcome is written here once, as an enum member,
and everyone else names the member. The values are what audit records and the
wire carry: never change one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Every reason code: the signer's refusals and the rules' own words."""

    # authentication / authorisation
    NO_IDENTITY = "NO_IDENTITY"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    IDENTITY_REVOKED = "IDENTITY_REVOKED"
    SESSION_AGENT_MISMATCH = "SESSION_AGENT_MISMATCH"
    SESSION_PLANNER_MISMATCH = "SESSION_PLANNER_MISMATCH"
    # input validation
    FIELD_MISSING = "FIELD_MISSING"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    AMOUNT_MALFORMED = "AMOUNT_MALFORMED"
    AMOUNT_NOT_POSITIVE = "AMOUNT_NOT_POSITIVE"
    AMOUNT_TOO_PRECISE = "AMOUNT_TOO_PRECISE"
    AMOUNT_TOO_LARGE = "AMOUNT_TOO_LARGE"
    STRING_TOO_LONG = "STRING_TOO_LONG"
    STRING_EMPTY = "STRING_EMPTY"
    STRING_CONTROL_CHAR = "STRING_CONTROL_CHAR"
    STRING_INVALID = "STRING_INVALID"
    NONCE_MALFORMED = "NONCE_MALFORMED"
    UNKNOWN_ASSET = "UNKNOWN_ASSET"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    # x402: a scheme or version this signer does not pay, or an EIP-712 domain other
    # than the configured token's
    X402_UNSUPPORTED = "X402_UNSUPPORTED"
    X402_DOMAIN_MISMATCH = "X402_DOMAIN_MISMATCH"
    # the key version exists but is not active (verify-only, revoked or destroyed)
    KEY_NOT_ACTIVE = "KEY_NOT_ACTIVE"
    BUDGET_INVALID = "BUDGET_INVALID"
    TTL_INVALID = "TTL_INVALID"
    SESSION_ID_MALFORMED = "SESSION_ID_MALFORMED"
    # replay guard
    EXPIRY_IN_PAST = "EXPIRY_IN_PAST"
    EXPIRY_TOO_FAR = "EXPIRY_TOO_FAR"
    EXPIRY_AFTER_SESSION = "EXPIRY_AFTER_SESSION"
    NONCE_REPLAYED = "NONCE_REPLAYED"
    # sessions and policy
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    ASSET_NOT_IN_SESSION = "ASSET_NOT_IN_SESSION"
    PAYEE_NOT_IN_SESSION = "PAYEE_NOT_IN_SESSION"
    POLICY_NO_RULE_ALLOWED = "POLICY_NO_RULE_ALLOWED"
    # infrastructure
    HSM_UNAVAILABLE = "HSM_UNAVAILABLE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # policy packs, approvals and plans
    NO_POLICY_PACK = "NO_POLICY_PACK"
    SESSION_PACK_CHANGED = "SESSION_PACK_CHANGED"
    APPROVAL_NOT_FOUND = "APPROVAL_NOT_FOUND"
    APPROVAL_NOT_PENDING = "APPROVAL_NOT_PENDING"
    APPROVAL_DENIED = "APPROVAL_DENIED"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    APPROVER_IS_REQUESTER = "APPROVER_IS_REQUESTER"
    APPROVER_IS_PLANNER = "APPROVER_IS_PLANNER"
    PLAN_INVALID = "PLAN_INVALID"
    SESSION_NOT_EXPLORING = "SESSION_NOT_EXPLORING"
    FROZEN = "FROZEN"
    PAYMENT_WITHDRAWN = "PAYMENT_WITHDRAWN"
    # the client certificate is not a client leaf issued directly by the client CA
    CLIENT_CERT_PROFILE = "CLIENT_CERT_PROFILE"
    # the client certificate ended after its connection opened (the handshake checked it)
    CLIENT_CERT_EXPIRED = "CLIENT_CERT_EXPIRED"
    # admission: the worker threads are shared out (signer/api/admission.py)
    SERVER_BUSY = "SERVER_BUSY"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    # the principal spent its refusal budget: refused before its request is read
    RATE_LIMITED = "RATE_LIMITED"
    # the caller's deadline passed, or it cancelled: nothing was decided or signed
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CALL_CANCELLED = "CALL_CANCELLED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    # live policy reload (signer/core/reloads.py)
    POLICY_PACK_INVALID = "POLICY_PACK_INVALID"
    RELOAD_NOT_FOUND = "RELOAD_NOT_FOUND"
    RELOAD_NOT_PENDING = "RELOAD_NOT_PENDING"
    RELOAD_EXPIRED = "RELOAD_EXPIRED"
    RELOAD_STALE = "RELOAD_STALE"
    RELOAD_SAME_OPERATOR = "RELOAD_SAME_OPERATOR"
    # the confirmer reviewed another set than the one pending (ConfirmReload new_sha256)
    RELOAD_NOT_REVIEWED = "RELOAD_NOT_REVIEWED"
    # receipts (Signer.GetReceipt): unknown, or not the caller's to see (the same answer)
    RECEIPT_NOT_FOUND = "RECEIPT_NOT_FOUND"
    # a payment's standing (Signer.CheckPayment): no signed payment with that id names
    # the caller; voided since it was signed (or FROZEN); past its "exp"
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_DESTROYED = "KEY_DESTROYED"
    PAYMENT_EXPIRED = "PAYMENT_EXPIRED"
    # a payee's offline check of a payment (paywarden.verify): the JWS is no compact
    # JWS of JSON objects; its header or payload is not RFC 8785 canonical; its header
    # has a parameter other than alg, kid and typ; its "alg" is not ES256 (none
    # included); its "typ" (header or claim) is not a payment's; its claims are not
    # exactly a payment's; its signature does not verify; it names another payee; it
    # was issued in the future; the JWKS given is not a usable key set
    JWS_MALFORMED = "JWS_MALFORMED"
    JWS_NOT_CANONICAL = "JWS_NOT_CANONICAL"
    JWS_HEADER_NOT_ALLOWED = "JWS_HEADER_NOT_ALLOWED"
    ALG_NOT_ALLOWED = "ALG_NOT_ALLOWED"
    TYP_NOT_ALLOWED = "TYP_NOT_ALLOWED"
    CLAIMS_INVALID = "CLAIMS_INVALID"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    WRONG_PAYEE = "WRONG_PAYEE"
    PAYMENT_NOT_YET_VALID = "PAYMENT_NOT_YET_VALID"
    JWKS_INVALID = "JWKS_INVALID"

    # -- the rules' denials (paywarden.policy.rules, payees, breaker) --
    SESSION_IN_EXPLORE_PHASE = "SESSION_IN_EXPLORE_PHASE"
    PLAN_NO_MATCH = "PLAN_NO_MATCH"
    ASSET_NOT_ALLOWED = "ASSET_NOT_ALLOWED"
    KEY_NOT_ALLOWED = "KEY_NOT_ALLOWED"
    PAYEE_DENYLISTED = "PAYEE_DENYLISTED"
    PAYEE_LOOKS_DENYLISTED = "PAYEE_LOOKS_DENYLISTED"
    PAYEE_NOT_CANONICAL = "PAYEE_NOT_CANONICAL"
    PAYEE_CONFUSABLE = "PAYEE_CONFUSABLE"
    PAYEE_NOT_ALLOWED = "PAYEE_NOT_ALLOWED"
    PAYEE_NOT_ASCII = "PAYEE_NOT_ASCII"
    AMOUNT_ABOVE_MAX = "AMOUNT_ABOVE_MAX"
    DAILY_LIMIT_EXCEEDED = "DAILY_LIMIT_EXCEEDED"
    ROLLING_LIMIT_EXCEEDED = "ROLLING_LIMIT_EXCEEDED"
    VELOCITY_EXCEEDED = "VELOCITY_EXCEEDED"
    SESSION_DIVERSITY_EXCEEDED = "SESSION_DIVERSITY_EXCEEDED"
    DAILY_DIVERSITY_EXCEEDED = "DAILY_DIVERSITY_EXCEEDED"
    OUTSIDE_ALLOWED_HOURS = "OUTSIDE_ALLOWED_HOURS"
    FIRST_PAYMENT_DENIED = "FIRST_PAYMENT_DENIED"
    BREAKER_TRIPPED = "BREAKER_TRIPPED"
    # a session or plan that does not fit its pack (paywarden.policy.compile)
    SESSION_TTL_ABOVE_PACK = "SESSION_TTL_ABOVE_PACK"
    SESSION_BUDGET_ABOVE_PACK = "SESSION_BUDGET_ABOVE_PACK"
    PLAN_REQUIRED = "PLAN_REQUIRED"
    # a mandate chain that does not verify (paywarden.verify.mandates): AP2
    # invalid_credential, invalid_mandate or unresolved_constraint
    MANDATE_MALFORMED = "MANDATE_MALFORMED"
    MANDATE_SIGNATURE_INVALID = "MANDATE_SIGNATURE_INVALID"
    MANDATE_ISSUER_UNTRUSTED = "MANDATE_ISSUER_UNTRUSTED"
    MANDATE_LINK_INVALID = "MANDATE_LINK_INVALID"
    MANDATE_DISCLOSURE_INVALID = "MANDATE_DISCLOSURE_INVALID"
    MANDATE_EXPIRED = "MANDATE_EXPIRED"
    MANDATE_NOT_YET_VALID = "MANDATE_NOT_YET_VALID"
    MANDATE_NO_EXPIRY = "MANDATE_NO_EXPIRY"
    MANDATE_VCT_MISMATCH = "MANDATE_VCT_MISMATCH"
    MANDATE_CONSTRAINT_UNKNOWN = "MANDATE_CONSTRAINT_UNKNOWN"
    MANDATE_CONSTRAINT_INVALID = "MANDATE_CONSTRAINT_INVALID"
    MANDATE_ALLOWLIST_WITHHELD = "MANDATE_ALLOWLIST_WITHHELD"
    MANDATE_UNBOUNDED = "MANDATE_UNBOUNDED"
    # a verified mandate this signer will not open a session from
    MANDATES_NOT_CONFIGURED = "MANDATES_NOT_CONFIGURED"
    MANDATE_HOLDER_MISMATCH = "MANDATE_HOLDER_MISMATCH"
    MANDATE_SELF_DELEGATED = "MANDATE_SELF_DELEGATED"
    MANDATE_REVOKED = "MANDATE_REVOKED"
    MANDATE_MISMATCH = "MANDATE_MISMATCH"
    MANDATE_HOP_REPLAYED = "MANDATE_HOP_REPLAYED"
    MANDATE_AGENT_HOP_MISSING = "MANDATE_AGENT_HOP_MISSING"
    MANDATE_PAYEES_OUTSIDE_PACK = "MANDATE_PAYEES_OUTSIDE_PACK"
    # a payment outside its session's mandate (the decision is recorded)
    MANDATE_AMOUNT_OUT_OF_RANGE = "MANDATE_AMOUNT_OUT_OF_RANGE"
    MANDATE_BUDGET_EXCEEDED = "MANDATE_BUDGET_EXCEEDED"
    MANDATE_USES_EXHAUSTED = "MANDATE_USES_EXHAUSTED"
    MANDATE_TOO_SOON = "MANDATE_TOO_SOON"
    MANDATE_NOT_YET_EXECUTABLE = "MANDATE_NOT_YET_EXECUTABLE"
    MANDATE_REFERENCE_MISMATCH = "MANDATE_REFERENCE_MISMATCH"
    # -- the rules asking for human approval --
    FIRST_PAYMENT_NEEDS_APPROVAL = "FIRST_PAYMENT_NEEDS_APPROVAL"
    AMOUNT_NEEDS_APPROVAL = "AMOUNT_NEEDS_APPROVAL"
    # -- the rules allowing (trace words only: never a refusal) --
    ALLOWED = "ALLOWED"  # the decision: every rule allowed
    SESSION_OPEN = "SESSION_OPEN"
    SESSION_LIVE = "SESSION_LIVE"
    SESSION_PHASE_OK = "SESSION_PHASE_OK"
    ASSET_IN_SESSION = "ASSET_IN_SESSION"
    SESSION_ANY_PAYEE = "SESSION_ANY_PAYEE"
    WITHIN_MANDATE = "WITHIN_MANDATE"
    PAYEE_IN_SESSION = "PAYEE_IN_SESSION"
    WITHIN_BUDGET = "WITHIN_BUDGET"
    NO_PLAN = "NO_PLAN"
    PLAN_LINE_MATCHED = "PLAN_LINE_MATCHED"
    ASSET_ALLOWED = "ASSET_ALLOWED"
    KEY_ALLOWED = "KEY_ALLOWED"
    PAYEE_NOT_DENYLISTED = "PAYEE_NOT_DENYLISTED"
    PAYEE_ALLOWED = "PAYEE_ALLOWED"
    PAYEE_ALLOWED_BY_PATTERN = "PAYEE_ALLOWED_BY_PATTERN"
    AMOUNT_WITHIN_MAX = "AMOUNT_WITHIN_MAX"
    NO_DAILY_LIMIT = "NO_DAILY_LIMIT"
    WITHIN_DAILY_LIMIT = "WITHIN_DAILY_LIMIT"
    NO_ROLLING_LIMIT = "NO_ROLLING_LIMIT"
    WITHIN_ROLLING_LIMIT = "WITHIN_ROLLING_LIMIT"
    WITHIN_VELOCITY = "WITHIN_VELOCITY"
    WITHIN_SESSION_DIVERSITY = "WITHIN_SESSION_DIVERSITY"
    WITHIN_DAILY_DIVERSITY = "WITHIN_DAILY_DIVERSITY"
    WITHIN_ALLOWED_HOURS = "WITHIN_ALLOWED_HOURS"
    PAYEE_PAID_BEFORE = "PAYEE_PAID_BEFORE"
    FIRST_PAYMENT_ALLOWED = "FIRST_PAYMENT_ALLOWED"
    BELOW_APPROVAL_THRESHOLD = "BELOW_APPROVAL_THRESHOLD"


# The codes a rule gives when it allows, and the allowed decision's own: words of a
# trace, never the reason of a refusal (so no agent is ever told one).
ALLOWING: frozenset[Reason] = frozenset(
    {
        Reason.ALLOWED,
        Reason.SESSION_OPEN,
        Reason.SESSION_LIVE,
        Reason.SESSION_PHASE_OK,
        Reason.ASSET_IN_SESSION,
        Reason.SESSION_ANY_PAYEE,
        Reason.WITHIN_MANDATE,
        Reason.PAYEE_IN_SESSION,
        Reason.WITHIN_BUDGET,
        Reason.NO_PLAN,
        Reason.PLAN_LINE_MATCHED,
        Reason.ASSET_ALLOWED,
        Reason.KEY_ALLOWED,
        Reason.PAYEE_NOT_DENYLISTED,
        Reason.PAYEE_ALLOWED,
        Reason.PAYEE_ALLOWED_BY_PATTERN,
        Reason.AMOUNT_WITHIN_MAX,
        Reason.NO_DAILY_LIMIT,
        Reason.WITHIN_DAILY_LIMIT,
        Reason.NO_ROLLING_LIMIT,
        Reason.WITHIN_ROLLING_LIMIT,
        Reason.WITHIN_VELOCITY,
        Reason.WITHIN_SESSION_DIVERSITY,
        Reason.WITHIN_DAILY_DIVERSITY,
        Reason.WITHIN_ALLOWED_HOURS,
        Reason.PAYEE_PAID_BEFORE,
        Reason.FIRST_PAYMENT_ALLOWED,
        Reason.BELOW_APPROVAL_THRESHOLD,
    }
)

# The codes a rule gives when it asks for human approval: the payment is held, not refused.
ASKING_APPROVAL: frozenset[Reason] = frozenset(
    {Reason.FIRST_PAYMENT_NEEDS_APPROVAL, Reason.AMOUNT_NEEDS_APPROVAL}
)


class Outcome(StrEnum):
    """One rule's result."""

    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"  # allowed only with human approval


class Verdict(StrEnum):
    """A decision's outcome, as evaluated and as recorded."""

    ALLOW = "allow"
    DENY = "deny"
    NEEDS_APPROVAL = "pending"


class Phase(StrEnum):
    """Where a session is: a plan-bound one explores, then executes its plan."""

    NORMAL = "normal"
    EXPLORE = "explore"
    EXECUTE = "execute"


class SessionState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    EXPIRED = "expired"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class Vote(StrEnum):
    APPROVE = "approve"
    DENY = "deny"


class ReservationStatus(StrEnum):
    """A decision's hold on spend: counted while ``SPENT`` (allowed) or ``HELD``
    (waiting for approval, until the payment's expiry); ``RELEASED`` counts no more."""

    SPENT = "spent"
    HELD = "held"
    RELEASED = "released"


class FreezeScope(StrEnum):
    GLOBAL = "global"
    AGENT = "agent"
    SESSION = "session"
    KEY = "key"


class KeyState(StrEnum):
    """A payment key version's state: only an active version signs."""

    ACTIVE = "active"
    VERIFY_ONLY = "verify-only"  # listed in the JWKS, signs nothing
    REVOKED = "revoked"  # listed with its revocation time, signs nothing
    DESTROYED = "destroyed"  # gone from the token, no longer listed


class KeyProfile(StrEnum):
    """What a payment key signs: a profile fixes its curve and the form of a payment."""

    JWS_ES256 = "jws-es256"  # P-256, a JWS over the canonical payment (ES256)
    X402_EXACT_EVM = "x402-exact-evm"  # secp256k1, an EIP-3009 authorisation for x402


class FreezeSource(StrEnum):
    OPERATOR = "operator"
    BREAKER = "breaker"


class SignStatus(StrEnum):
    """What a Sign call returns: a signature, or a payment held for approval."""

    SIGNED = "signed"
    PENDING_APPROVAL = "pending_approval"


class FirstPaymentMode(StrEnum):
    """What a pack does with a payee the agent has never paid."""

    ALLOW = "allow"
    APPROVE = "approve"
    DENY = "deny"


class Direction(StrEnum):
    """What one change between two pack sets does to an agent's power
    (:mod:`paywarden.policy.diff`); a change it cannot judge widens."""

    WIDENS = "widens"
    NARROWS = "narrows"
    NEUTRAL = "neutral"


class ReloadState(StrEnum):
    """Where a policy reload is: applied at once, pending a second operator, or
    refused; a pending one is applied, expires, or is overtaken by another reload."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"  # the packs read were the set in force
    PENDING = "pending"
    REJECTED = "rejected"  # refused: nothing changed
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


# -- amounts ---------------------------------------------------------------------------

# Digits, at most one dot with digits on both sides; no sign, exponent, whitespace or
# leading zero. ``[0-9]`` is ASCII only: other scripts' digits never match.
_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")


def format_amount(minor: int, decimals: int) -> str:
    """Minor units written in the asset's units, every decimal shown (``1250``, 2 -> ``12.50``)."""
    if decimals == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


@dataclass(frozen=True, slots=True, order=True)
class Amount:
    """An amount as an integer count of the asset's smallest unit."""

    minor: int
    decimals: int

    def __str__(self) -> str:
        return format_amount(self.minor, self.decimals)


class AmountError(ValueError):
    """A text is not an amount of the asset; ``reason`` says why (an ``AMOUNT_*`` code)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_plain_decimal(text: str) -> bool:
    """Has the shape of an amount, whatever the asset's decimals."""
    return _PLAIN_DECIMAL.fullmatch(text) is not None


def parse_amount(text: str, decimals: int, *, max_digits: int | None = None) -> Amount:
    """The one parser of amounts: a plain decimal, exactly (never rounded); zero is an
    amount. Raises :class:`AmountError`: malformed, more decimals than ``decimals``, or
    (with ``max_digits``) more digits before the dot than that."""
    match = _PLAIN_DECIMAL.fullmatch(text) if text.isascii() else None
    if match is None:
        raise AmountError(Reason.AMOUNT_MALFORMED, f"{text!r} is not a plain decimal")
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > decimals:
        raise AmountError(
            Reason.AMOUNT_TOO_PRECISE, f"{text!r} has {len(frac)} decimals, not at most {decimals}"
        )
    if max_digits is not None and len(whole) > max_digits:
        raise AmountError(Reason.AMOUNT_TOO_LARGE, f"{text!r} has more than {max_digits} digits")
    scale: int = 10**decimals
    return Amount(
        int(whole) * scale + (int(frac.ljust(decimals, "0")) if decimals else 0), decimals
    )


# -- assets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset the signer knows (built once from its configuration)."""

    code: str
    decimals: int
    # Payee identifiers of this asset compare case-insensitively (e-mail-like ids).
    case_insensitive: bool = False
    # The largest amount one payment or budget may name, as configured (None: no cap).
    max_amount: str | None = None
    max_amount_minor: int | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_amount is not None:
            limit = parse_amount(self.max_amount, self.decimals).minor
            object.__setattr__(self, "max_amount_minor", limit)


# -- plans -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanLine:
    """One line of a session's committed plan: at most ``count`` payments to ``payee``
    in ``asset``, each at most ``max_amount_minor``; ``used`` of them made or held."""

    payee: str  # as the planner wrote it (NFC)
    payee_key: str  # normalised: what a payment's payee is compared with
    asset: str
    max_amount_minor: int
    count: int
    used: int = 0
