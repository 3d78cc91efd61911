"""Attack: rewrite the whole audit log, recompute its chain, delete the checkpoints.

The log is a hash chain and a Merkle tree that anyone holding the store file can
recompute; only the signed checkpoints, and copies of them kept elsewhere, pin
history. These tests take a real ``paywarden serve`` log, rewrite it as an
attacker with the file would (append-only triggers dropped, every later record
re-chained with RFC 8785 and the independent RFC 9162 tree of
``tests/test_audit.py``), and check what ``paywarden audit verify`` says.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from tests.helpers import Pki, TestToken, write_config
from tests.support.cli import audit_verify, paywarden
from tests.support.clients import running_api, signed
from tests.support.sessions import open_session
from tests.support.vectors import mth, rfc_leaf
from tests.test_audit import AUDIT_PACK, TASK, audit_intent

AFTER_TRUSTED = 25  # payments signed after the trusted checkpoint was taken


@dataclass
class Log:
    db: Path  # the stopped server's store; tests copy it
    config: Path
    public_key: Path
    trusted_file: Path  # `paywarden ctl checkpoint --out`, taken mid-run
    trusted_size: int
    trusted_root: str


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki) -> Log:
    base = tmp_path_factory.mktemp("rewrite")
    config = write_config(base, token, pki, packs={"audit.toml": AUDIT_PACK})
    pem, saved = base / "audit.pem", base / "kept-elsewhere.json"
    with running_api(config, pki) as (srv, api):
        session = open_session(
            api.sessions("planner", "planner-1"), "agent-1", "1000.00", task=TASK, timeout=30
        )
        for _ in range(5):
            signed(api.answer(audit_intent(session, amount="12.50")))
        operator = pki.dir / "operator-operator-1"
        proc = paywarden(
            "ctl", "--addr", srv.addr, "--ca", pki.dir / "ca.crt",
            "--cert", operator.with_suffix(".crt"), "--key", operator.with_suffix(".key"),
            "checkpoint", "--out", saved, "--public-key-out", pem,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        for _ in range(AFTER_TRUSTED):
            signed(api.answer(audit_intent(session, amount="1.00")))
    assert srv.proc.returncode == 0
    db = base / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    kept = json.loads(saved.read_text(encoding="utf-8"))
    return Log(db, config, pem, saved, int(kept["size"]), str(kept["root"]))


def rewritten(
    source: Path,
    tmp_path: Path,
    change: Callable[[int, dict[str, Any]], dict[str, Any]],
    *,
    keep_checkpoints_upto: int = 0,
) -> Path:
    """A copy of the store with ``change(seq, record)`` applied to every record, the
    chain recomputed from the first changed one, and the checkpoints above
    ``keep_checkpoints_upto`` deleted: a log that is consistent with itself."""
    copy = tmp_path / "state.db"
    shutil.copyfile(source, copy)
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER audit_log_no_update")
    bodies = [str(b) for (b,) in conn.execute("SELECT body FROM audit_log ORDER BY seq")]
    changed = False
    for i, body in enumerate(bodies):
        record = json.loads(body)
        edited = change(i + 1, dict(record))
        if changed or edited != record:
            changed = True
            edited["prev_root"] = mth([b.encode() for b in bodies[:i]]).hex()
            bodies[i] = rfc8785.dumps(edited).decode()
            conn.execute(
                "UPDATE audit_log SET body = ?, leaf = ? WHERE seq = ?",
                (bodies[i], rfc_leaf(bodies[i].encode()), i + 1),
            )
    assert changed
    conn.execute("DELETE FROM audit_checkpoints WHERE size > ?", (keep_checkpoints_upto,))
    conn.commit()
    conn.close()
    return copy


def inflate_first_payment() -> Callable[[int, dict[str, Any]], dict[str, Any]]:
    """The first USD 12.50 payment now reads USD 912.50."""
    target: list[int] = []

    def change(seq: int, record: dict[str, Any]) -> dict[str, Any]:
        decision = record.get("decision") or {}
        if record.get("action") == "sign.decision" and decision.get("amount") == "12.50":
            if not target or target[0] == seq:
                target[:] = [seq]
                record["decision"] = {**decision, "amount": "912.50"}
        return record

    return change


def test_the_untouched_log_verifies_with_no_unsealed_tail(log: Log, tmp_path: Path) -> None:
    copy = tmp_path / "state.db"
    shutil.copyfile(log.db, copy)
    proc = audit_verify(copy, log.public_key, "--config", log.config)
    assert proc.returncode == 0, proc.stderr
    assert "0 records after the last checkpoint" in proc.stdout  # sealed when it stopped


def test_a_rewritten_log_with_its_checkpoints_deleted_fails_verify(
    log: Log, tmp_path: Path
) -> None:
    copy = rewritten(log.db, tmp_path, inflate_first_payment())
    proc = audit_verify(copy, log.public_key)
    assert proc.returncode == 1, proc.stdout
    assert "audit log OK" not in proc.stdout
    assert "no signed checkpoint" in proc.stderr


def test_a_rewrite_contradicts_a_checkpoint_file_kept_elsewhere(log: Log, tmp_path: Path) -> None:
    copy = rewritten(log.db, tmp_path, inflate_first_payment())
    proc = audit_verify(copy, log.public_key, "--checkpoint", log.trusted_file)
    assert proc.returncode == 1, proc.stdout
    assert f"trusted checkpoint {log.trusted_size} ({log.trusted_file})" in proc.stderr
    assert "not consistent with it" in proc.stderr


def test_a_rewrite_contradicts_a_trusted_tree_head(log: Log, tmp_path: Path) -> None:
    copy = rewritten(log.db, tmp_path, inflate_first_payment())
    proc = audit_verify(copy, log.public_key, "--trusted", f"{log.trusted_size}:{log.trusted_root}")
    assert proc.returncode == 1, proc.stdout
    assert f"trusted checkpoint {log.trusted_size}" in proc.stderr
    assert "not consistent with it" in proc.stderr


def test_the_untouched_log_is_consistent_with_the_trusted_checkpoint(
    log: Log, tmp_path: Path
) -> None:
    copy = tmp_path / "state.db"
    shutil.copyfile(log.db, copy)
    proc = audit_verify(copy, log.public_key, "--checkpoint", log.trusted_file,
        "--trusted", f"{log.trusted_size}:{log.trusted_root}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"consistent with trusted checkpoint {log.trusted_size}") == 2


def test_a_trusted_checkpoint_longer_than_the_log_names_the_removed_records(
    log: Log, tmp_path: Path
) -> None:
    copy = tmp_path / "state.db"
    shutil.copyfile(log.db, copy)
    proc = audit_verify(copy, log.public_key, "--trusted", f"100000:{log.trusted_root}")
    assert proc.returncode == 1
    assert "records" in proc.stderr and "to 100000 were removed" in proc.stderr


def test_a_forged_checkpoint_file_is_refused(log: Log, tmp_path: Path) -> None:
    """A signed checkpoint whose root was changed is not a trusted head."""
    kept = json.loads(log.trusted_file.read_text(encoding="utf-8"))
    kept["root"] = "0" * 64
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(kept), encoding="utf-8")
    copy = tmp_path / "state.db"
    shutil.copyfile(log.db, copy)
    proc = audit_verify(copy, log.public_key, "--checkpoint", forged)
    assert proc.returncode == 1
    assert "disagrees with its signed body" in proc.stderr


def test_rewriting_after_a_kept_checkpoint_leaves_a_tail_longer_than_the_interval(
    log: Log, tmp_path: Path
) -> None:
    """The attacker keeps the checkpoints up to the trusted one and rewrites what
    follows: the log verifies as a chain, but a signer with checkpoint_every = 10
    never leaves 25 records unsealed."""

    def rename_payee(seq: int, record: dict[str, Any]) -> dict[str, Any]:
        decision = record.get("decision") or {}
        if seq > log.trusted_size and decision.get("payee") == "weather-data-inc":
            record["decision"] = {**decision, "payee": "attacker-inc"}
        return record

    copy = rewritten(log.db, tmp_path, rename_payee, keep_checkpoints_upto=log.trusted_size)
    proc = audit_verify(copy, log.public_key, "--config", log.config)
    assert proc.returncode == 1, proc.stdout
    assert "more than the 20 the checkpoint interval allows" in proc.stderr
    # a wider limit given on the command line lets the same tail through
    assert audit_verify(copy, log.public_key, "--max-unsealed", "1000").returncode == 0


def _last_record_an_hour_later(log: Log, tmp_path: Path) -> tuple[Path, int]:
    """A rewritten copy of the log, record times kept as written but the last
    record's an hour later, and that record's seq."""
    conn = sqlite3.connect(log.db)
    last = int(conn.execute("SELECT max(seq) FROM audit_log").fetchone()[0])
    conn.close()

    def later(seq: int, record: dict[str, Any]) -> dict[str, Any]:
        if seq == last:
            record["time"] = int(record["time"]) + 3600
        return record

    copy = rewritten(log.db, tmp_path, later, keep_checkpoints_upto=log.trusted_size)
    return copy, last


def test_an_unsealed_tail_spanning_longer_than_the_interval_fails(log: Log, tmp_path: Path) -> None:
    """The same rewrite, record times kept as written but the last record an hour
    later: the signer seals at least every checkpoint_seconds."""
    copy, _last = _last_record_an_hour_later(log, tmp_path)
    proc = audit_verify(copy, log.public_key, "--config", log.config, "--max-unsealed", "1000")
    assert proc.returncode == 1, proc.stdout
    assert "seconds the checkpoint interval allows" in proc.stderr


def test_a_long_unsealed_tail_says_what_may_cause_it_and_how_to_accept_it(
    log: Log, tmp_path: Path
) -> None:
    """An auditor told only "BROKEN" after a crash or an HSM outage cannot tell it
    from a rewrite: the failure names the legitimate causes and the options that
    accept such a tail, never the checkpoint command that would seal a rewrite."""
    copy, last = _last_record_an_hour_later(log, tmp_path)
    proc = audit_verify(copy, log.public_key, "--config", log.config)
    assert proc.returncode == 1, proc.stdout
    tail = last - log.trusted_size
    assert f"records {log.trusted_size + 1} to {last}: {tail} records" in proc.stderr
    assert "killed before its next checkpoint" in proc.stderr
    assert "HSM was out, so the audit key could not sign a checkpoint" in proc.stderr
    span = proc.stderr.split("unsealed across ")[1].split(" seconds")[0]
    assert f"--max-unsealed {tail} and --max-unsealed-seconds {span}, or a" in proc.stderr
    assert "(--trusted SIZE:ROOT, --checkpoint FILE)" in proc.stderr
    assert "Never seal an unexplained tail with `paywarden ctl checkpoint`" in proc.stderr
    # the options it names accept this tail, and nothing else is wrong with it
    accepted = audit_verify(copy, log.public_key, "--config", log.config,
        "--max-unsealed", str(tail), "--max-unsealed-seconds", span,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    # a checkpoint kept from before the tail does not cover it
    kept = audit_verify(
        copy, log.public_key, "--config", log.config, "--checkpoint", log.trusted_file
    )
    assert kept.returncode == 1, kept.stdout


def test_a_log_without_checkpoints_says_what_may_cause_it(log: Log, tmp_path: Path) -> None:
    copy = rewritten(log.db, tmp_path, inflate_first_payment())
    proc = audit_verify(copy, log.public_key, "--config", log.config)
    assert proc.returncode == 1, proc.stdout
    assert "no signed checkpoint" in proc.stderr
    assert "killed before its next checkpoint" in proc.stderr
    assert "Never seal an unexplained log with `paywarden ctl checkpoint`" in proc.stderr
