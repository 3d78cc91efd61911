"""The one exception of the mandate checks, with its AP2 error code and our reason code.

The reason codes are strings (``MANDATE_...``): the signer maps them onto its own
``Reason`` members of the same spelling, so a :class:`MandateError` can be compared with
either."""

from __future__ import annotations

from enum import StrEnum


class MandateCode(StrEnum):
    """The AP2 error codes a mandate refusal answers with (``agent_authorization.md``)."""

    INVALID_CREDENTIAL = "invalid_credential"
    INVALID_MANDATE = "invalid_mandate"
    UNRESOLVED_CONSTRAINT = "unresolved_constraint"


# invalid_credential: the chain is not what it claims to be.
MALFORMED = "MANDATE_MALFORMED"
SIGNATURE_INVALID = "MANDATE_SIGNATURE_INVALID"
ISSUER_UNTRUSTED = "MANDATE_ISSUER_UNTRUSTED"
LINK_INVALID = "MANDATE_LINK_INVALID"
DISCLOSURE_INVALID = "MANDATE_DISCLOSURE_INVALID"
# invalid_mandate: a genuine mandate that does not approve a session now.
EXPIRED = "MANDATE_EXPIRED"
NOT_YET_VALID = "MANDATE_NOT_YET_VALID"
NO_EXPIRY = "MANDATE_NO_EXPIRY"
VCT_MISMATCH = "MANDATE_VCT_MISMATCH"
# unresolved_constraint: what the mandate bounds, we cannot enforce (or it bounds nothing).
CONSTRAINT_UNKNOWN = "MANDATE_CONSTRAINT_UNKNOWN"
ALLOWLIST_WITHHELD = "MANDATE_ALLOWLIST_WITHHELD"
CONSTRAINT_INVALID = "MANDATE_CONSTRAINT_INVALID"
UNBOUNDED = "MANDATE_UNBOUNDED"

REASONS = (
    MALFORMED,
    SIGNATURE_INVALID,
    ISSUER_UNTRUSTED,
    LINK_INVALID,
    DISCLOSURE_INVALID,
    EXPIRED,
    NOT_YET_VALID,
    NO_EXPIRY,
    VCT_MISMATCH,
    CONSTRAINT_UNKNOWN,
    ALLOWLIST_WITHHELD,
    CONSTRAINT_INVALID,
    UNBOUNDED,
)


SHOWN = 64  # at most this much of a value from the chain is echoed in a message
MESSAGE = 1024  # and a message is never longer than this


def cut(text: str, limit: int = SHOWN) -> str:
    """``text``, cut to ``limit`` characters (the last three ``...`` when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object) -> str:
    """A value read from a chain, for a message: its ``repr`` cut to 64 characters (a 30 KB
    claim echoed whole would not fit a gRPC status, nor belong in a log)."""
    return cut(repr(value))


class MandateError(Exception):
    """A mandate chain that opens nothing: ``code`` is the AP2 error code of the receipt,
    ``reason`` our machine-readable reason (a ``MANDATE_...`` string), ``message`` what was
    found, in words (never a key or a whole token; a value from the chain cut by
    :func:`shown`, the whole message to 1024 characters)."""

    def __init__(self, code: MandateCode, reason: str, message: str) -> None:
        message = cut(message, MESSAGE)
        super().__init__(f"[{code}/{reason}] {message}")
        self.code = code
        self.reason = reason
        self.message = message


def credential(reason: str, message: str) -> MandateError:
    return MandateError(MandateCode.INVALID_CREDENTIAL, reason, message)


def mandate(reason: str, message: str) -> MandateError:
    return MandateError(MandateCode.INVALID_MANDATE, reason, message)


def unresolved(reason: str, message: str) -> MandateError:
    return MandateError(MandateCode.UNRESOLVED_CONSTRAINT, reason, message)
