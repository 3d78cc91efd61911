#!/usr/bin/env python3
"""Times ``paywarden audit verify`` on a store with many records.

    .venv/bin/python scripts/bench_audit.py [--records 200000] [--checkpoint-every 1000]
                                            [--batch 10000] [--runs 3] [--dir DIR]
                                            [--no-proofs]

Builds a fresh SQLite store through the store's own API (or reuses the one in
``--dir``): decision records shaped like the signer's ``sign.decision`` events
(a 16-rule trace, pack, payload, the agent's words: about 3 KB each), appended in
transactions of up to ``--batch`` records, and a checkpoint signed every
``--checkpoint-every`` records with an audit key made for the run (P-256, in
memory; the signed body is the signer's own). Then runs ``paywarden audit verify``
on it as its own process ``--runs`` times and prints the wall time and records/s
of each run (interpreter start-up included), then the best of ``--runs`` in
process (no start-up), by default and with ``--full``. It also times an inclusion
and a consistency proof and a tree head as the signer makes them, and prints how
many stored rows each read, beside the same proof made from every leaf. The
figures depend on the machine: run it by hand, never as an assertion in the test
suite.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "audit.bench"
START = 1_700_000_000

RULES = (
    "session_open", "session_not_expired", "session_phase", "asset_in_session",
    "payee_in_session", "asset_allowed", "key_allowed", "payee_denylist", "payee_allowlist",
    "max_per_payment", "daily_limit", "rolling_24h_limit", "session_budget", "plan_line",
    "first_payment", "approval_threshold",
)  # fmt: skip


def decision_event(i: int) -> dict[str, Any]:
    """A record shaped like the signer's ``sign.decision`` (about 2 KB of JSON)."""
    at = START + i // 20
    payee = f"payee-{i % 37}.example"
    payload = json.dumps(
        {"amt": "0.25", "asset": "USD", "exp": at + 120, "iat": at, "jti": f"dec_{i:012d}",
         "nonce": f"nonce-{i}", "payee": payee, "ref": f"inv-{i}", "sid": f"ses_{i // 500}",
         "sub": f"agent-{i % 8}", "typ": "paywarden.payment.v1"},
        separators=(",", ":"), sort_keys=True,
    )  # fmt: skip
    trace = [
        {"rule": rule, "outcome": "allow", "reason": "ALLOWED", "limit": "5000.00",
         "observed": str(i % 1000), "detail": f"{rule} holds for this payment"}
        for rule in RULES
    ]  # fmt: skip
    return {
        "action": "sign.decision",
        "time": at,
        "actor": {"role": "agent", "id": f"agent-{i % 8}"},
        "decision": {
            "id": f"dec_{i:012d}", "outcome": "allow", "reason": "ALLOWED", "message": "",
            "denied_by": [], "trace": trace,
            "pack": {"id": "bench-pack", "sha256": "ab" * 32, "version": 3},
            "key_id": "payments.v1", "session_id": f"ses_{i // 500}", "payee": payee,
            "asset": "USD", "amount": "0.25", "nonce": f"nonce-{i}", "expires_at": at + 120,
        },
        "payload": payload,
        "untrusted": {"purpose": f"weather data for task {i} — résumé café"},
    }  # fmt: skip


def _sign(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    from paywarden.signer.auditlog.checkpoints import encode_signature

    r, s = utils.decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return encode_signature(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def build(
    path: Path, records: int, every: int, batch: int, key: ec.EllipticCurvePrivateKey
) -> None:
    from paywarden.signer.auditlog.checkpoints import checkpoint_body
    from paywarden.signer.store.records import Checkpoint
    from paywarden.signer.store.sqlite import SqliteStore

    store = SqliteStore(path)
    store.migrate()
    written = 0
    try:
        while written < records:
            end = min(records, written + batch)
            with store.payment_tx(wait=60) as tx:
                for i in range(written, end):
                    tx.audit(decision_event(i))
                    if (i + 1) % every == 0:
                        break
            written = i + 1
            if written % every == 0 or written == records:
                size, root = store.audit_head()
                at = START + written // 20
                body = checkpoint_body(size, root, at, KEY_ID)
                store.add_checkpoint(
                    Checkpoint(size, root.hex(), at, KEY_ID, body.decode(), _sign(key, body))
                )
    finally:
        store.close()


def time_verify(db: Path, pem: Path, every: int) -> tuple[float, str]:
    command = [
        sys.executable, "-m", "paywarden.signer.cli", "audit", "verify", "--db", str(db),
        "--public-key", str(pem), "--max-unsealed", str(2 * every),
        "--max-unsealed-seconds", str(10**9), "--max-time-skew", "0",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench_audit: audit verify failed:\n{proc.stdout}{proc.stderr}")
    return seconds, proc.stdout.strip()


def _lookup(stored: dict[tuple[int, int], bytes]) -> Callable[[int, int], bytes]:
    return lambda level, index: stored[level, index]


def time_proofs(db: Path) -> None:
    """An inclusion proof, a consistency proof and a tree head as the signer makes them
    (the nodes they need, read from the store at once, then folded), against the same
    proofs from every leaf (how the signer made them before it kept subtrees)."""
    from paywarden.signer.auditlog import merkle, subtrees
    from paywarden.signer.store.sqlite import SqliteStore

    store = SqliteStore(db)
    try:
        size, _ = store.audit_head()
        index, first = size // 3, size // 2 + 1
        cases: list[tuple[str, list[subtrees.Run]]] = [
            (
                f"inclusion proof of record {index + 1} in {size}",
                [((0, index),), subtrees.root_nodes(size), *subtrees.inclusion_nodes(index, size)],
            ),
            (
                f"consistency proof {first} -> {size}",
                [
                    subtrees.root_nodes(first),
                    subtrees.root_nodes(size),
                    *subtrees.consistency_nodes(first, size),
                ],
            ),
            (f"tree head of {size}", [subtrees.root_nodes(size)]),
        ]
        for name, runs in cases:
            started = time.perf_counter()
            nodes = subtrees.needed(runs)
            stored = store.audit_subtrees(nodes)
            subtrees.folds(runs, _lookup(stored))
            seconds = time.perf_counter() - started
            print(f"bench_audit: {name}: {seconds * 1000:.2f} ms, {len(nodes)} stored rows read")
    finally:
        store.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        started = time.perf_counter()
        leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf FROM audit_log ORDER BY seq")]
        merkle.inclusion_proof(index, leaves)
        merkle.root(leaves)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    print(
        f"bench_audit: for comparison, the same inclusion proof from every leaf: "
        f"{seconds * 1000:.0f} ms, {len(leaves)} rows read"
    )


def time_in_process(db: Path, pem: Path, every: int, full: bool) -> float:
    """Seconds for the command's own verification, without the interpreter's start-up."""
    from paywarden.signer.auditlog import verification, vouched
    from paywarden.signer.store.sqlite_reads import audit_log_snapshot

    key = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    limits = verification.SealLimits(records=2 * every, seconds=10**9)
    with audit_log_snapshot(db) as log:
        started = time.perf_counter()
        if full:
            rows = vouched.as_text(log.records())
            report = verification.verify(rows, log.checkpoints, key, limits=limits, time_skew=0)
        else:
            report = vouched.verify(log.records, log.checkpoints, key, limits=limits, time_skew=0)
        seconds = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"bench_audit: the log does not verify: {report.problems}")
    return seconds


def _size(db: Path) -> int:
    from paywarden.signer.store.sqlite import SqliteStore

    store = SqliteStore(db)
    try:
        return store.audit_head()[0]
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10_000, help="records per transaction")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="build (or reuse) the store here")
    parser.add_argument("--no-proofs", action="store_true", help="time audit verify only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        db, pem = root / "audit.db", root / "audit.pem"
        if not db.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            started = time.perf_counter()
            build(db, args.records, args.checkpoint_every, args.batch, key)
            built = time.perf_counter() - started
            print(f"bench_audit: built {args.records} records in {built:.1f} s at {db}")
            pem.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        records = _size(db)
        figures = []
        for run in range(1, args.runs + 1):
            seconds, out = time_verify(db, pem, args.checkpoint_every)
            figures.append(records / seconds)
            print(f"bench_audit: run {run}: {seconds:.2f} s, {figures[-1]:,.0f} records/s ({out})")
        print(
            f"bench_audit: paywarden audit verify, {records} records: median "
            f"{statistics.median(figures):,.0f} records/s, best {max(figures):,.0f} "
            "(the whole command, start-up included)"
        )
        for full in (False, True):
            seconds = min(
                time_in_process(db, pem, args.checkpoint_every, full) for _ in range(args.runs)
            )
            print(
                f"bench_audit: in process{' with --full' if full else ''}: {seconds:.2f} s, "
                f"{records / seconds:,.0f} records/s (best of {args.runs})"
            )
        if not args.no_proofs:
            time_proofs(db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
