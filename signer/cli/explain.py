"""``paywarden explain agent ID``: what an agent can do right now, asked of the running
signer as an operator (``Control.ExplainAgent``, over mutual TLS as ``paywarden ctl``).

The report is written from the signer's document; ``--json`` prints the document
itself (RFC 8785 JSON, schema ``paywarden.explain.agent/v1``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from paywarden.signer.cli.dial import add_connection_arguments, call
from paywarden.v1 import control_pb2, control_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, "operator-dev-operator")
    sub = parser.add_subparsers(dest="explain_command", required=True)
    p = sub.add_parser("agent", help="an agent's packs, limits, use, sessions and freezes")
    p.add_argument("agent_id")
    p.add_argument("--json", action="store_true", help="print the signer's JSON document")


def run(args: argparse.Namespace) -> int:
    return call(args, control_pb2_grpc.ControlStub, _explain)


def _explain(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    resp = stub.ExplainAgent(control_pb2.ExplainAgentRequest(agent_id=args.agent_id), timeout=30)
    if args.json:
        print(resp.document)
        return 0
    print("\n".join(report(json.loads(resp.document))))
    return 0


def _limit(name: str, allowance: dict[str, str] | None) -> str:
    if allowance is None:
        return f"{name}: no limit"
    a = allowance
    return f"{name}: {a['limit']}, used {a['used']}, remains {a['remaining']}"


def _counted(c: dict[str, int]) -> str:
    return f"{c['limit']}, used {c['used']}, remains {c['remaining']}"


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def report(doc: dict[str, Any]) -> list[str]:
    """The document as lines a person reads."""
    lines = [
        f"agent {doc['agent_id']} at {doc['at']} (day started {doc['day_start']}, "
        f"{doc['timezone']})"
    ]
    power = doc["power"]
    if power is None:
        lines.append("  no policy pack covers this agent: every payment it asks for is denied")
    else:
        lines += _power(power)
    lines.append(
        f"  open sessions: {doc['open_sessions_total']}"
        + (f" (the {len(doc['open_sessions'])} soonest to expire below)"
           if len(doc["open_sessions"]) < doc["open_sessions_total"] else "")
    )  # fmt: skip
    for s in doc["open_sessions"]:
        lines.append(
            f"    {s['session_id']}: {s['state']}, phase {s['phase']}, expires {s['expires_at']},"
            f" pack {s['pack_id']} v{s['pack_version']}, {s['payees']} payees"
            + (f", plan lines {s['plan_lines_used']}/{s['plan_lines']} used" if s["plan_lines"]
               else "")
        )  # fmt: skip
        for b in s["budgets"]:
            lines.append(
                f"      {b['asset']}: budget {b['budget']}, spent {b['spent']},"
                f" remains {b['remaining']}"
            )
    lines.append(f"  pending approvals: {doc['pending_approvals']}")
    if doc["revoked"] is not None:
        r = doc["revoked"]
        lines.append(f"  REVOKED: by {r['operator']} at {r['created_at']}: {r['reason']}")
    if not doc["freezes"]:
        lines.append("  freezes: none")
    for f in doc["freezes"]:
        where = f"{f['scope']} {f['target']}".strip()
        lines.append(f"  FROZEN: {where} by {f['actor']} at {f['at']}: {f['reason']}")
    return lines


def _power(power: dict[str, Any]) -> list[str]:
    c = power["cover"]
    lines = [f"  pack {c['id']} v{c['version']} (sha256 {c['sha256']}) via {c['via']}"]
    for a in power["assets"]:
        keys = ", ".join(
            k["key_id"] + ("" if k["configured"] else " (not configured)")
            + (f" [{k['state']}]" if k["state"] else "")
            for k in a["keys"]
        )  # fmt: skip
        lines.append(f"  {a['asset']}: keys {keys}; at most {a['max_per_payment']} per payment")
        lines.append(f"    spent today {a['spent_today']}, in the last 24 h {a['spent_24h']}")
        lines.append("    " + _limit("daily limit", a["daily"]))
        lines.append("    " + _limit("rolling 24 h limit", a["rolling_24h"]))
        steps = [f"above {s['above']}: {s['approvers']} approver(s)" for s in a["approval"]]
        lines.append(f"    approval: {'; '.join(steps) if steps else 'never asked'}")
    p = power["payees"]
    lines.append(
        f"  payees: allow {_names(p['allow'])}; patterns {_names(p['allow_patterns'])};"
        f" deny {_names(p['deny'])}; deny patterns {_names(p['deny_patterns'])};"
        f" first payment to a payee: {p['first_payment']}"
    )
    v = power["velocity"]
    if v is not None:
        lines.append(f"  velocity: per {v['window_seconds']} s {_counted(v['payments'])}")
    d = power["diversity"]
    per_day = _counted(d["per_day"]) if d["per_day"] else f"no limit ({d['payees_today']} today)"
    lines.append(
        f"  payees per day: {per_day}; per session: {d['max_payees_per_session'] or 'no limit'}"
    )
    h = power["hours"]
    if h is not None:
        lines.append(
            f"  hours: {h['start']}-{h['end']} ({'open' if h['open_now'] else 'closed'} now)"
        )
    b = power["breaker"]
    if b is not None:
        lines += _breaker(b)
    s = power["sessions"]
    budgets = _names([f"{k} {v}" for k, v in s["max_budget"].items()])
    lines.append(
        f"  sessions: ttl at most {s['max_ttl_seconds']} s; budget at most {budgets};"
        f" plan required: {'yes' if s['require_plan'] else 'no'}"
    )
    return lines


def _breaker(b: dict[str, Any]) -> list[str]:
    trips = []
    if b["max_rejections"] is not None:
        trips.append(f"more than {b['max_rejections']} rejections")
    if b["max_rejection_rate"] is not None:
        trips.append(f"a rejection rate above {b['max_rejection_rate']} (of {b['min_decisions']}+)")
    trips += [f"{k} spend above {v}" for k, v in b["max_spend"].items()]
    if b["max_payees"] is not None:
        trips.append(f"more than {b['max_payees']} payees")
    return [
        f"  breaker over {b['window_seconds']} s: freezes on {_names(trips)}",
        f"    now: {b['decisions']} decisions, {b['denials']} denials, {b['payees']} payees,"
        f" spend {_names([f'{k} {v}' for k, v in b['spend'].items()])}",
    ]
