"""scripts/replicas.sh end to end: a throwaway PostgreSQL, two signer processes on it, payments
sent alternately through both, the shared audit log verified, and nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.helpers import ROOT


def test_replicas_sh_signs_through_both_replicas_and_verifies_the_shared_log(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # No PG* variables of ours reach the script (PgCluster drops them for the server, too).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        ["scripts/replicas.sh"],
        cwd=ROOT,
        env={**env, "PAYWARDEN_DATA": str(data), "PAYMENTS": "4"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    addrs = re.findall(r"^replicas\.sh: replica ([12]) serving on (\S+) \(pid (\d+)\)$", out, re.M)
    assert [n for n, _, _ in addrs] == ["1", "2"], out
    assert addrs[0][1] != addrs[1][1]
    # Payment i through replica 1 + (i - 1) mod 2, each signed with the payment key.
    payments = re.findall(
        r"^payment (\d) via replica ([12]) \((\S+)\): SIGNED to \S+, kid payments\.v1,"
        r" decision (dec_\S+), JWS eyJ\S+$",
        out,
        re.M,
    )
    assert [(p, r) for p, r, _, _ in payments] == [("1", "1"), ("2", "2"), ("3", "1"), ("4", "2")]
    assert {a for _, _, a, _ in payments} == {addrs[0][1], addrs[1][1]}
    assert len({d for _, _, _, d in payments}) == 4
    assert "retry of payment 1 via replica 2: the identical JWS" in out
    assert "replica 1 signed 2 payment(s)" in out
    assert "replica 2 signed 2 payment(s)" in out
    # One log, in commit order across both replicas: the session and the four payments.
    assert re.search(r"^audit log OK: \d+ records", out, re.M), out
    # The trap stopped both signers and the cluster, and removed the cluster's files.
    assert not any(_serves(int(pid)) for _, _, pid in addrs)
    found = re.search(r"password in (\S+)/paywarden\.password\)$", out, re.M)
    assert found is not None, out
    assert not Path(found[1]).exists()


def _serves(pid: int) -> bool:
    """Is ``pid`` a running ``paywarden serve`` of the demo (not gone, reused or a zombie)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"serve" in cmdline and b"replica-" in cmdline
