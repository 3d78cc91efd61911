"""One decision of the audit log in words (``paywarden audit show``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from paywarden.policy.vocabulary import Outcome, Verdict


def when(epoch: int) -> str:
    """A record time as people read it, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def explain(records: Sequence[tuple[int, str]], decision_id: str) -> str | None:
    """One decision in words: who asked, what, which rules, why, who approved."""
    events = [json.loads(body) for _, body in records]
    decided = [e for e in events if e.get("decision", {}).get("id") == decision_id]
    if not decided:
        return None
    e = decided[0]
    d = e["decision"]
    who = e["actor"]
    pack = d.get("pack") or {}
    lines = [
        f"Decision {decision_id} (audit record {e['seq']}, {when(e['time'])})",
        f"  {who['role']} {who['id']} asked to pay {d['amount']} {d['asset']} to "
        f"{d['payee']!r} with key {d['key_id']} in session {d['session_id']}.",
        f"  Policy pack: {pack.get('id', 'none')} v{pack.get('version', '-')} "
        f"(sha256 {str(pack.get('sha256', '-'))[:16]}…).",
    ]
    deciding = next((r for r in d["trace"] if r["outcome"] == Outcome.DENY), None)
    if d["outcome"] == Verdict.DENY:
        rule = deciding["rule"] if deciding else "—"
        lines.append(f"  DENIED by rule {rule}: {d['reason']} — {d['message']}")
    elif d["outcome"] == Verdict.NEEDS_APPROVAL:
        held = next((r for r in d["trace"] if r["outcome"] == Outcome.APPROVE), None)
        rule = held["rule"] if held else "—"
        lines.append(
            f"  HELD FOR APPROVAL by rule {rule}: {d['reason']} — {d['message']} "
            f"({e.get('approvals_required', 1)} approver(s), approval {e.get('approval_id')})"
        )
    else:
        lines.append("  ALLOWED: every rule allowed it.")
    lines.append("  Rules evaluated:")
    for r in d["trace"]:
        limit = f" limit {r['limit']}" if r.get("limit") is not None else ""
        seen = f", observed {r['observed']}" if r.get("observed") is not None else ""
        lines.append(f"    {r['outcome']:<7} {r['rule']}: {r['reason']}{limit}{seen}")
    approval_id = e.get("approval_id")
    for later in events:
        related = later.get("decision_id") == decision_id or (
            approval_id is not None and later.get("approval_id") == approval_id
        )
        if later is e or not related:
            continue
        a = later["actor"]
        action = later["action"]
        if action.startswith("approval."):
            note = f" ({later['note']})" if later.get("note") else ""
            lines.append(
                f"  {when(later['time'])}: {a['role']} {a['id']} {action[9:]}d it{note}; "
                f"approval now {later.get('state')}."
            )
        elif action == "sign.retry":
            lines.append(
                f"  {when(later['time'])}: the agent retried; answer {later.get('answer')}"
                f" ({later.get('reason')})."
            )
        elif action == "sign.retry.summary":
            lines.append(
                f"  {when(later['since'])} to {when(later['until'])}: the agent retried"
                f" {later.get('count')} more time(s) with the same answer {later.get('answer')}"
                f" ({later.get('reason')}), counted, not recorded one by one"
                f" (first recorded as #{later.get('first_seq')})."
            )
    purpose = e.get("untrusted", {}).get("purpose", "")
    lines.append(f"  Agent's purpose (UNTRUSTED, decided nothing): {json.dumps(purpose)}")
    return "\n".join(lines)
