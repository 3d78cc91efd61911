"""What the attack tests share, written once instead of once per module.

The values a test cares about (budget, payee, amount, expiry) stay at the call site.
"""

from __future__ import annotations

import json
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

from paywarden.policy.engine import AgentFacts, Facts, SessionFacts
from paywarden.policy.payees import normalise
from paywarden.policy.vocabulary import Phase, SessionState
from paywarden.signer.identity import Principal, Role

from tests.support.cli import audit_verify
from tests.support.intents import intent_fields

# The callers a test names when it calls the service in process, not over gRPC.
AGENT = Principal(Role.AGENT, "agent-1")
PLANNER = Principal(Role.PLANNER, "planner-1")
OPERATOR = Principal(Role.OPERATOR, "operator-1")

# The payment the in-process attack tests ask for: a USD 0.60 dataset; the session and
# expiry (and a nonce, when one matters) are said at the call site.
dataset_fields = partial(intent_fields, payee="weather-data-inc", amount="0.60", purpose="dataset")


def signer_facts(payee_text: str, asset: str, *, case_insensitive: bool) -> Facts:
    """Facts for a payment of 100 minor units to ``payee_text`` in an open session, as
    signer/core/facts.py builds them: ``payee`` is the folded key, ``payee_text`` as written."""
    return Facts(
        now=1_750_000_000,
        minute_of_day=600,
        agent_id="agent-1",
        payee=normalise(payee_text, case_insensitive=case_insensitive),
        asset=asset,
        amount_minor=100,
        key_id="payments.v1",
        session=SessionFacts(
            session_id="s-1",
            agent_id="agent-1",
            state=SessionState.OPEN,
            phase=Phase.NORMAL,
            expires_at=1_750_003_600,
            budgets_minor={asset: 10_000},
            spent_minor={asset: 0},
            allowed_payees=frozenset(),
        ),
        agent=AgentFacts(),
        decimals=2,
        payee_text=payee_text,
    )


def audit_log(db: Path) -> list[dict[str, Any]]:
    """Every audit record in the SQLite file, in order (opened read-only); fails the
    test unless the records are numbered 1..n, each carrying its own row's number."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, body FROM audit_log ORDER BY seq").fetchall()
    finally:
        conn.close()
    records = [json.loads(body) for _seq, body in rows]
    assert [r["seq"] for r in records] == [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    return records


def stored_records(store: Any, after: int = 0) -> list[dict[str, Any]]:
    """The audit records an open store holds past the first ``after``, in order."""
    size, _root = store.audit_head()
    return [json.loads(store.audit_record(seq)) for seq in range(after + 1, size + 1)]


def assert_audit_verifies(db: Path, public_key: Path) -> None:
    """``paywarden audit verify`` accepts the log in ``db`` (run as the CLI)."""
    verify = audit_verify(db, public_key)
    assert verify.returncode == 0, verify.stdout + verify.stderr
