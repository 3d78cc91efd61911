"""What the operator report (``paywarden report``) reads of a store, SQLite or
PostgreSQL, offline and read-only, in one snapshot (:func:`.offline_reads.report_facts`).

Everything is aggregated in SQL or streamed: the report may cover the whole history,
but what it keeps in memory is bounded by the number of agents, assets, time buckets
and the few rows of each "latest" list, never by the number of payments. Amounts are
decimal TEXT of minor units (they may exceed 64 bits): no SQL ``SUM`` ever adds them.
Spend over time comes from the cumulative ``agent_spend`` aggregates (a bucket's spend
is the difference of two running totals), the payees' totals from ``(amount, count)``
groups multiplied out in Python, exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Rows = Callable[[str, Sequence[Any]], Iterator[Any]]
"""Runs one query of the snapshot, its rows as they stream."""

HOUR, DAY, WEEK = 3600, 86_400, 7 * 86_400
# The coarsest bucket is chosen that still gives at least a few bars; never more than
# about a hundred buckets for hours and days.
MAX_HOURS, MAX_DAYS = 72, 92
# A spend chart never draws more columns than this: a bucket that would (``--bucket
# hour`` over years, or an edited time far off) is coarsened to whole weeks.
MAX_COLUMNS = 400
LATEST = 20  # approvals and checkpoints listed one by one
TOP_PAYEES = 10
FREEZE_EVENTS = 50
FREEZE_ACTIONS = ("freeze.set", "freeze.clear", "breaker.freeze")
# An approval's status as the core judges it at ``now`` (signer/core/approvals.py
# _approval_view): the store marks one expired only when it is next touched, so a
# pending approval, or an approved one whose payment was never signed, is expired once
# its expiry passed (an approved payment that was signed stays approved: it was used).
# ``a`` the approval, ``d`` its decision; one ``?``: the report's time.
STATUS_AT = (
    "CASE WHEN a.expires_at <= ? AND (a.status = 'pending'"
    " OR (a.status = 'approved' AND d.jws IS NULL)) THEN 'expired' ELSE a.status END"
)


@dataclass(frozen=True, slots=True)
class SpendBucket:
    agent_id: str
    asset: str
    start: int  # the bucket's first second (UTC epoch)
    amount_minor: int


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    status: str
    required: int
    created_at: int
    decided_at: int | None
    agent_id: str
    payee: str
    asset: str
    amount_minor: int
    approvers: tuple[str, ...]  # "approve by x" / "deny by y", in vote order


@dataclass(frozen=True, slots=True)
class ApprovalStatus:
    status: str
    count: int
    decided: int  # of them with a decision time
    total_seconds: int  # summed time to decide (of those decided)
    max_seconds: int | None


@dataclass(slots=True)
class FreezeSpan:
    """One freeze from its audit record to the record that lifted it (if any)."""

    scope: str
    target: str
    actor: str
    reason: str
    at: int
    lifted_at: int | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Payee:
    payee: str
    payments: int
    agents: int
    amounts: dict[str, int]  # asset -> minor units


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    size: int
    root: str
    at: int
    key_id: str


@dataclass(slots=True)
class ReportFacts:
    bucket_seconds: int
    spend: list[SpendBucket] = field(default_factory=list)
    payments: dict[tuple[str, str], int] = field(default_factory=dict)  # (agent, asset) -> n
    decisions: list[tuple[str, str, int]] = field(default_factory=list)  # outcome, reason, n
    agent_outcomes: list[tuple[str, str, int]] = field(default_factory=list)
    approval_status: list[ApprovalStatus] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    freezes: list[FreezeSpan] = field(default_factory=list)  # newest first
    unreadable_freezes: int = 0  # freeze records of the log that could not be parsed
    frozen_now: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    payees: list[Payee] = field(default_factory=list)
    denied_payees: list[tuple[str, int]] = field(default_factory=list)
    audit_size: int = 0
    checkpoint_count: int = 0
    checkpoints: list[CheckpointRow] = field(default_factory=list)  # newest first
    decimals: dict[str, int] = field(default_factory=dict)  # asset -> as sessions recorded


def bucket_for(first: int | None, last: int | None) -> int:
    """Hours for up to three days of activity, days up to about three months, weeks beyond."""
    if first is None or last is None:
        return DAY
    if last // HOUR - first // HOUR < MAX_HOURS:
        return HOUR
    if last // DAY - first // DAY < MAX_DAYS:
        return DAY
    return WEEK


def capped(bucket: int, first: int | None, last: int | None) -> int:
    """``bucket``, or whole weeks enough that ``first``..``last`` spans at most
    :data:`MAX_COLUMNS` buckets."""
    if first is None or last is None or int(last) // bucket - int(first) // bucket < MAX_COLUMNS:
        return bucket
    weeks = 1
    while int(last) // (weeks * WEEK) - int(first) // (weeks * WEEK) >= MAX_COLUMNS:
        weeks *= 2
    return weeks * WEEK


def read(rows: Rows, now: int, bucket_seconds: int | None = None) -> ReportFacts:
    """Every figure of the report, read through ``rows`` (one snapshot), with the
    approvals' status as at ``now`` (epoch seconds)."""
    first, last = next(rows("SELECT MIN(at), MAX(at) FROM agent_spend", ()))
    if bucket_seconds is None:
        bucket_seconds = bucket_for(first, last)
    bucket_seconds = capped(bucket_seconds, first, last)
    facts = ReportFacts(bucket_seconds)
    facts.spend = _spend(rows, bucket_seconds)
    facts.payments = {
        (str(a), str(s)): int(n)
        for a, s, n in rows(
            "SELECT agent_id, asset, COUNT(*) FROM reservations WHERE signed = 1"
            " GROUP BY agent_id, asset",
            (),
        )
    }
    facts.decisions = [
        (str(o), str(r), int(n))
        for o, r, n in rows(
            "SELECT outcome, reason, COUNT(*) FROM decisions GROUP BY outcome, reason"
            " ORDER BY COUNT(*) DESC, outcome, reason",
            (),
        )
    ]
    facts.agent_outcomes = [
        (str(a), str(o), int(n))
        for a, o, n in rows(
            "SELECT agent_id, outcome, COUNT(*) FROM decisions GROUP BY agent_id, outcome"
            " ORDER BY agent_id, outcome",
            (),
        )
    ]
    facts.approval_status = _approval_status(rows, now)
    facts.approvals = _approvals(rows, now)
    facts.freezes, facts.unreadable_freezes = _freezes(rows)
    facts.frozen_now = [
        (str(s), str(t), str(a), str(r), int(at))
        for s, t, a, r, at in rows(
            "SELECT scope, target, actor, reason, at FROM freezes ORDER BY at DESC, scope, target",
            (),
        )
    ]
    facts.payees = _payees(rows)
    facts.denied_payees = [
        (str(p), int(n))
        for p, n in rows(
            "SELECT payee, COUNT(*) FROM decisions WHERE outcome = 'deny' AND payee != ''"
            " GROUP BY payee ORDER BY COUNT(*) DESC, payee LIMIT ?",
            (TOP_PAYEES,),
        )
    ]
    (size,) = next(rows("SELECT size FROM audit_state WHERE id = 1", ()), (0,))
    facts.audit_size = int(size)
    (count,) = next(rows("SELECT COUNT(*) FROM audit_checkpoints", ()))
    facts.checkpoint_count = int(count)
    facts.checkpoints = [
        CheckpointRow(int(s), str(r), int(at), str(k))
        for s, r, at, k in rows(
            "SELECT size, root, at, key_id FROM audit_checkpoints ORDER BY size DESC LIMIT ?",
            (LATEST,),
        )
    ]
    facts.decimals = {
        str(a): int(d)
        for a, d in rows(
            "SELECT asset, MAX(decimals) FROM session_budgets WHERE decimals IS NOT NULL"
            " GROUP BY asset",
            (),
        )
    }
    return facts


def _spend(rows: Rows, bucket: int) -> list[SpendBucket]:
    """Each agent's signed spend per asset and bucket: the running total at the end of
    the bucket less the one at the end of the agent's previous bucket in that asset."""
    out: list[SpendBucket] = []
    before: dict[tuple[str, str], int] = {}
    for agent_id, asset, at, total in rows(
        "SELECT s.agent_id, s.asset, s.at, s.total FROM agent_spend s"
        " JOIN (SELECT agent_id, asset, MAX(at) AS last FROM agent_spend"
        " GROUP BY agent_id, asset, at / ?) m"
        " ON m.agent_id = s.agent_id AND m.asset = s.asset AND m.last = s.at"
        " ORDER BY s.agent_id, s.asset, s.at",
        (bucket,),
    ):
        key = (str(agent_id), str(asset))
        running = int(total)
        amount = running - before.get(key, 0)
        before[key] = running
        if amount:
            out.append(SpendBucket(key[0], key[1], int(at) // bucket * bucket, amount))
    return out


def _approval_status(rows: Rows, now: int) -> list[ApprovalStatus]:
    return [
        ApprovalStatus(
            str(status),
            int(n),
            int(decided),
            int(total or 0),
            int(longest) if longest is not None else None,
        )
        for status, n, decided, total, longest in rows(
            "SELECT s, COUNT(*), COUNT(decided_at), SUM(decided_at - created_at),"  # noqa: S608 - a constant
            " MAX(decided_at - created_at)"
            f" FROM (SELECT {STATUS_AT} AS s, a.decided_at, a.created_at FROM approvals a"
            " JOIN decisions d ON d.id = a.decision_id) x"
            " GROUP BY s ORDER BY s",
            (now,),
        )
    ]


def _approvals(rows: Rows, now: int) -> list[Approval]:
    latest = list(
        rows(
            f"SELECT a.id, {STATUS_AT}, a.required,"  # noqa: S608 - a constant
            " a.created_at, a.decided_at, d.agent_id,"
            " d.payee, d.asset, d.amount_minor FROM approvals a"
            " JOIN decisions d ON d.id = a.decision_id"
            " ORDER BY a.created_at DESC, a.id DESC LIMIT ?",
            (now, LATEST),
        )
    )
    out = []
    for row in latest:
        votes = tuple(
            f"{vote} by {who}"
            for who, vote in rows(
                "SELECT approver_id, vote FROM approval_votes WHERE approval_id = ?"
                " ORDER BY at, approver_id",
                (row[0],),
            )
        )
        out.append(
            Approval(
                str(row[0]),
                str(row[1]),
                int(row[2]),
                int(row[3]),
                int(row[4]) if row[4] is not None else None,
                str(row[5]),
                str(row[6]),
                str(row[7]),
                int(row[8]),
                votes,
            )
        )
    return out


def _actor(doc: dict[str, Any]) -> str:
    who = doc.get("actor")
    if isinstance(who, dict):
        if who.get("role") == "system":
            return "circuit breaker" if doc.get("action") == "breaker.freeze" else "system"
        return f"{who.get('role')}/{who.get('id')}"
    return "?"


def _freeze_record(body: object) -> tuple[dict[str, Any], int] | None:
    """A freeze record's document and time, or None if it cannot be read (an edited
    log: ``audit verify`` says where; the report shows what it can)."""
    try:
        doc = json.loads(str(body))
        at = doc.get("time", 0) if isinstance(doc, dict) else None
        if not isinstance(at, int) or isinstance(at, bool):
            return None
    except (ValueError, RecursionError):
        return None
    return doc, at


def _freezes(rows: Rows) -> tuple[list[FreezeSpan], int]:
    """Freezes set and lifted, from the audit log: the records are picked out in SQL by
    their (canonical JSON) action and parsed here; the newest :data:`FREEZE_EVENTS`, and
    how many such records could not be read (skipped)."""
    spans: list[FreezeSpan] = []
    open_: dict[tuple[str, str], FreezeSpan] = {}
    unreadable = 0
    patterns = [f'%"action":"{a}"%' for a in FREEZE_ACTIONS]
    for (body,) in rows(
        "SELECT body FROM audit_log WHERE body LIKE ? OR body LIKE ? OR body LIKE ? ORDER BY seq",
        patterns,
    ):
        parsed = _freeze_record(body)
        if parsed is None:
            unreadable += 1
            continue
        doc, at = parsed
        action = doc.get("action")
        if action not in FREEZE_ACTIONS:
            continue  # the words were inside some other record's text
        key = (str(doc.get("scope", "")), str(doc.get("target", "")))
        if action == "freeze.clear":
            span = open_.pop(key, None)
            if span is not None:
                span.lifted_at, span.lifted_by = at, _actor(doc)
                span.lift_reason = str(doc.get("reason", ""))
            continue
        span = FreezeSpan(key[0], key[1], _actor(doc), str(doc.get("reason", "")), at)
        open_[key] = span
        spans.append(span)
        if len(spans) > 4 * FREEZE_EVENTS:  # bounded: keep the newest
            spans = spans[-FREEZE_EVENTS:]
    return list(reversed(spans[-FREEZE_EVENTS:])), unreadable


def _payees(rows: Rows) -> list[Payee]:
    """The payees most often paid (signed payments), with their totals per asset."""
    top = [
        (str(p), int(n), int(agents))
        for p, n, agents in rows(
            "SELECT payee_key, COUNT(*), COUNT(DISTINCT agent_id) FROM reservations"
            " WHERE signed = 1 GROUP BY payee_key ORDER BY COUNT(*) DESC, payee_key LIMIT ?",
            (TOP_PAYEES,),
        )
    ]
    if not top:
        return []
    amounts: dict[str, dict[str, int]] = {p: {} for p, _, _ in top}
    marks = ", ".join("?" for _ in top)
    for payee, asset, amount, n in rows(
        "SELECT payee_key, asset, amount_minor, COUNT(*) FROM reservations"  # noqa: S608 - placeholders only
        f" WHERE signed = 1 AND payee_key IN ({marks}) GROUP BY payee_key, asset, amount_minor",
        [p for p, _, _ in top],
    ):
        per = amounts[str(payee)]
        per[str(asset)] = per.get(str(asset), 0) + int(amount) * int(n)
    return [Payee(p, n, agents, amounts[p]) for p, n, agents in top]
