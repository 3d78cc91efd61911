"""Session ids and the validation of OpenSession requests."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from paywarden.policy.vocabulary import Asset
from paywarden.signer.core.validation import clean_text, parse_amount
from paywarden.signer.encoding import b64url
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import PRINCIPAL_ID

SESSION_PREFIX = "ses_"
_SESSION_ID = re.compile(r"^ses_[A-Za-z0-9_-]{43}$")
MAX_TASK = 4096
MAX_PAYEES = 256


def new_session_id() -> str:
    """256 random bits (the design asks for at least 128)."""
    return SESSION_PREFIX + b64url(secrets.token_bytes(32))


def new_decision_id() -> str:
    return "dec_" + b64url(secrets.token_bytes(16))


def parse_session_id(text: str) -> str:
    if not text:
        raise InvalidInput(Reason.FIELD_MISSING, "session_id is required")
    if not _SESSION_ID.fullmatch(text):
        raise InvalidInput(Reason.SESSION_ID_MALFORMED, "session_id is malformed")
    return text


@dataclass(frozen=True, slots=True)
class SessionSpec:
    agent_id: str
    task_description: str
    budgets_minor: dict[str, int]
    ttl_seconds: int
    allowed_payees: tuple[str, ...]


def validate_agent_and_task(agent_id: str, task_description: str) -> tuple[str, str]:
    """The agent id and the task description of an OpenSession request, checked."""
    if not agent_id:
        raise InvalidInput(Reason.FIELD_MISSING, "agent_id is required")
    if not PRINCIPAL_ID.fullmatch(agent_id):
        raise InvalidInput(Reason.STRING_INVALID, "agent_id is not a valid principal id")
    task = clean_text("task_description", task_description, max_len=MAX_TASK, allow_newlines=True)
    return agent_id, task


def validate_session_request(
    agent_id: str,
    task_description: str,
    budgets: list[tuple[str, str]],
    ttl_seconds: int,
    allowed_payees: list[str],
    *,
    assets: Mapping[str, Asset],
    max_ttl: int,
) -> SessionSpec:
    agent_id, task = validate_agent_and_task(agent_id, task_description)
    if not budgets:
        raise InvalidInput(Reason.BUDGET_INVALID, "at least one budget is required")
    budgets_minor: dict[str, int] = {}
    for asset, amount in budgets:
        known = assets.get(asset)
        if known is None:
            raise InvalidInput(
                Reason.UNKNOWN_ASSET, "a budget names an asset this signer does not know"
            )
        if asset in budgets_minor:
            raise InvalidInput(Reason.BUDGET_INVALID, f"asset {asset} has two budgets")
        budgets_minor[asset] = parse_amount(f"budget[{asset}]", amount, known).minor
    if not 1 <= ttl_seconds <= max_ttl:
        raise InvalidInput(Reason.TTL_INVALID, f"ttl_seconds must be between 1 and {max_ttl}")
    if len(allowed_payees) > MAX_PAYEES:
        raise InvalidInput(Reason.STRING_INVALID, f"at most {MAX_PAYEES} allowed payees")
    payees = tuple(sorted({clean_text("allowed_payees[]", p, max_len=256) for p in allowed_payees}))
    return SessionSpec(agent_id, task, budgets_minor, ttl_seconds, payees)
