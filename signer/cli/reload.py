"""``paywarden ctl reload [--show ID | --confirm ID]``: the signer reads its policy
packs again, or shows a pending reload, or confirms one.

``--confirm`` first fetches the pending reload (GetReload), prints what it would
change against the set in force now, and sends the hash of the set it printed: the
signer refuses if that is not the set it would put in force.

Exit status: 0 when the packs read are in force (applied, confirmed, or unchanged),
3 when the reload widens an agent whose pack asks for a second operator and waits
for one (``paywarden ctl reload --confirm ID`` by another operator; ``--show ID``
exits 3 too), 1 when the signer refused it (an invalid pack, a stale or expired
reload, the same operator, a set other than the one reviewed).
"""

from __future__ import annotations

import argparse
from typing import Any

from paywarden.signer.cli.policy_diff import change_lines
from paywarden.v1 import control_pb2, control_pb2_grpc

EXIT_IN_FORCE = 0
EXIT_PENDING = 3
EXIT_REFUSED = 1


def add_reload_arguments(sub: Any) -> None:
    p = sub.add_parser("reload", help="read the policy packs again (a widening may wait)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--confirm", metavar="ID", help="confirm another operator's pending reload")
    which.add_argument("--show", metavar="ID", help="show a pending reload and what it changes")


def _packs(refs: Any) -> str:
    return ", ".join(f"{r.id} v{r.version} ({r.sha256[:12]})" for r in refs) or "none"


def _print(resp: control_pb2.ReloadPolicyResponse) -> None:
    print(f"packs in force before: set {resp.old_sha256}: {_packs(resp.old_packs)}")
    print(f"packs read:            set {resp.new_sha256}: {_packs(resp.new_packs)}")
    rows = [(c.subject, c.field, c.direction, c.description) for c in resp.changes]
    for line in change_lines(rows):
        print(line)
    print(f"widens: {'yes' if resp.widens else 'no'}")


def reload_command(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    if args.show or args.confirm:
        shown = stub.GetReload(
            control_pb2.GetReloadRequest(reload_id=args.show or args.confirm), timeout=30
        )
        print(f"reload {shown.reload_id}, proposed by {shown.proposed_by}:")
        if shown.state != control_pb2.RELOAD_PENDING:
            print(f"settled: no longer pending (set {shown.new_sha256})")
            if args.show:
                return EXIT_REFUSED
        else:
            _print(shown)
            if args.show:
                print(f"pending until {shown.expires_at}")
                return EXIT_PENDING
        request = control_pb2.ConfirmReloadRequest(
            reload_id=args.confirm, new_sha256=shown.new_sha256
        )
        print(f"confirming set {shown.new_sha256}, as shown above", flush=True)
        resp = stub.ConfirmReload(request, timeout=30)
    else:
        resp = stub.ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        _print(resp)
    if resp.state == control_pb2.RELOAD_PENDING:
        print(
            f"pending {resp.reload_id}: nothing changed; a second operator confirms with "
            f"`paywarden ctl reload --confirm {resp.reload_id}` before {resp.expires_at}"
        )
        return EXIT_PENDING
    if resp.state == control_pb2.RELOAD_UNCHANGED:
        print("unchanged: the packs read are the set in force")
    elif resp.reload_id:
        print(f"confirmed {resp.reload_id} (proposed by {resp.proposed_by}): in force")
    else:
        print("applied: in force")
    return EXIT_IN_FORCE
