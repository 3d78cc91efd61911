"""The facts a payment is decided on, read inside the deciding transaction.

Policy is pure: it sees only these values (the request, the session, the
agent's spend), never the store. Times of day are in the policy's time zone.
"""

from __future__ import annotations

import datetime as dt

from paywarden.policy import AgentFacts, Facts, SessionFacts, normalise
from paywarden.policy.vocabulary import SessionState
from paywarden.signer.core.payments import Intent
from paywarden.signer.store.records import AgentUsage, SessionRecord


def day_start(now: int, tz: dt.tzinfo) -> int:
    """Start of the calendar day of ``now`` in ``tz``. combine() gives fold=0: on a
    day whose clocks go back over midnight the day starts at the first midnight,
    never the repeated one."""
    local = dt.datetime.fromtimestamp(now, tz)
    return int(dt.datetime.combine(local.date(), dt.time(0), tzinfo=tz).timestamp())


def payment_facts(
    now: int,
    tz: dt.tzinfo,
    agent_id: str,
    intent: Intent,
    payee_key: str,
    session: SessionRecord,
    usage: AgentUsage,
    *,
    payee_in_session: bool,
    decimals: int,
    case_insensitive: bool,
) -> Facts:
    local = dt.datetime.fromtimestamp(now, tz)
    return Facts(
        now=now,
        minute_of_day=local.hour * 60 + local.minute,
        agent_id=agent_id,
        payee=payee_key,
        asset=intent.asset,
        amount_minor=intent.amount.minor,
        key_id=intent.key_id,
        session=SessionFacts(
            session_id=session.id,
            agent_id=session.agent_id,
            state=SessionState.CLOSED if session.closed_at is not None else SessionState.OPEN,
            phase=session.phase,
            expires_at=session.expires_at,
            budgets_minor=session.budgets_minor,
            spent_minor=session.spent_minor,
            allowed_payees=frozenset(
                normalise(p, case_insensitive=case_insensitive) for p in session.allowed_payees
            ),
            payees=session.payees,
            payee_seen=payee_in_session,
            plan=session.plan,
        ),
        decimals=decimals,
        payee_text=intent.payee,
        agent=AgentFacts(
            spent_24h_minor=usage.spent_24h_minor,
            spent_today_minor=usage.spent_today_minor,
            payments_in_window=usage.payments_in_window,
            payee_paid_before=usage.payee_paid_before,
            payees_today=usage.payees_today,
            payee_seen_today=usage.payee_seen_today,
        ),
    )
