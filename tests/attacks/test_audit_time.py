"""Attack: step the clock back, so that the audit log's times go backwards.

Under a clock stepped back ten minutes the signer once wrote records dated
before earlier ones, and ``paywarden audit verify`` said OK. The signer no
longer follows the clock back (tests/attacks/test_clock_rollback.py); these
tests check that verify notices such a log all the same. The log is a real
``paywarden serve`` log with one record's time moved back, its chain
recomputed and a checkpoint signed again with the real audit key in the
token: everything else about it verifies, as it did for the signer that
wrote it.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from paywarden.hsm import Hsm, KeyRef
from paywarden.signer.core import audit_events
from paywarden.signer.store.sqlite import SqliteStore

from tests.attacks.kit import AGENT, OPERATOR, audit_log
from tests.attacks.test_audit_rewrite import rewritten
from tests.helpers import MODULE, Pki, TestToken, write_config
from tests.support.cli import audit_verify
from tests.support.clients import running_api, signed
from tests.support.sessions import open_session
from tests.support.vectors import mth
from tests.test_audit import AUDIT_PACK, TASK, audit_intent


@dataclass
class Sealed:
    db: Path
    config: Path
    public_key: Path
    records: int


@pytest.fixture(scope="module")
def audit_hsm(token: TestToken) -> Iterator[Hsm]:
    """The token's audit key, as the signer holds it (one login per process)."""
    h = Hsm(
        MODULE, token.label, token.pin, [KeyRef("payments", 1)],
        audit_key=KeyRef.parse("audit.v1"), retry_interval=0,
    )  # fmt: skip
    h.open()
    yield h
    h.close()


@pytest.fixture(scope="module")
def sealed(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki, audit_hsm: Hsm
) -> Sealed:
    base = tmp_path_factory.mktemp("time")
    config = write_config(base, token, pki, packs={"audit.toml": AUDIT_PACK})
    with running_api(config, pki) as (_, api):
        session = open_session(
            api.sessions("planner", "planner-1"), "agent-1", "100.00", task=TASK, timeout=30
        )
        for _ in range(6):
            signed(api.answer(audit_intent(session, amount="1.00")))
    db = base / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n = int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    conn.close()
    pem = base / "audit.pem"
    pem.write_text(audit_hsm.audit_public_key().spki_pem, encoding="ascii")
    return Sealed(db, config, pem, n)


def reseal(db: Path, audit_hsm: Hsm) -> None:
    """One checkpoint over the whole (rewritten) log, signed by the audit key."""
    conn = sqlite3.connect(db)
    bodies = [str(b).encode() for (b,) in conn.execute("SELECT body FROM audit_log ORDER BY seq")]
    last = json.loads(bodies[-1])["time"]
    root = mth(bodies).hex()
    body = rfc8785.dumps(
        {"typ": "paywarden.checkpoint.v1", "size": len(bodies), "root": root,
         "time": last, "kid": "audit.v1"}
    ).decode()  # fmt: skip
    signature = base64.urlsafe_b64encode(audit_hsm.sign_checkpoint(body.encode())).rstrip(b"=")
    conn.execute("DELETE FROM audit_checkpoints")
    conn.execute(
        "INSERT INTO audit_checkpoints (size, root, at, key_id, body, signature)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (len(bodies), root, last, "audit.v1", body, signature.decode()),
    )
    conn.commit()
    conn.close()


def stepped_back(sealed: Sealed, tmp_path: Path, audit_hsm: Hsm, seq: int, seconds: int) -> Path:
    def back(s: int, record: dict[str, Any]) -> dict[str, Any]:
        if s == seq:
            record["time"] = int(record["time"]) - seconds
        return record

    copy = rewritten(sealed.db, tmp_path, back)
    reseal(copy, audit_hsm)
    return copy


def test_the_log_as_written_verifies(sealed: Sealed, tmp_path: Path) -> None:
    copy = tmp_path / "state.db"
    shutil.copyfile(sealed.db, copy)
    proc = audit_verify(copy, sealed.public_key, "--config", sealed.config)
    assert proc.returncode == 0, proc.stderr


def test_a_record_dated_ten_minutes_back_is_named(
    sealed: Sealed, tmp_path: Path, audit_hsm: Hsm
) -> None:
    k = sealed.records - 3
    copy = stepped_back(sealed, tmp_path, audit_hsm, k, 600)
    proc = audit_verify(copy, sealed.public_key, "--config", sealed.config)
    assert proc.returncode == 1, proc.stdout
    assert f"first bad record {k}" in proc.stderr
    assert f"record {k}: its time" in proc.stderr and "time went backwards" in proc.stderr
    # the only thing wrong with this log is its time
    assert proc.stderr.count("\n  ") == 1, proc.stderr


def test_a_record_a_second_behind_a_concurrent_one_is_not_an_attack(
    sealed: Sealed, tmp_path: Path, audit_hsm: Hsm
) -> None:
    """A call reads the clock before it waits for the store's lock, so its record
    may follow one stamped a little later: that is not the clock going back."""
    copy = stepped_back(sealed, tmp_path, audit_hsm, sealed.records - 3, 1)
    proc = audit_verify(copy, sealed.public_key, "--config", sealed.config)
    assert proc.returncode == 0, proc.stderr


def test_a_record_thirty_seconds_back_fails_a_tighter_skew(
    sealed: Sealed, tmp_path: Path, audit_hsm: Hsm
) -> None:
    """``--max-time-skew`` is the auditor's: a record 30 s back passes the default
    60 s and fails once the auditor allows only 10."""
    k = sealed.records - 3
    copy = stepped_back(sealed, tmp_path, audit_hsm, k, 30)
    proc = audit_verify(copy, sealed.public_key, "--config", sealed.config)
    assert proc.returncode == 0, proc.stderr
    proc = audit_verify(copy, sealed.public_key, "--config", sealed.config, "--max-time-skew", "10")
    assert proc.returncode == 1, proc.stdout
    assert f"first bad record {k}" in proc.stderr and "time went backwards" in proc.stderr


def test_a_refusal_that_waited_for_the_lock_does_not_date_the_log_backwards(
    sealed: Sealed, tmp_path: Path, audit_hsm: Hsm
) -> None:
    """A refusal (or a vote, a freeze, a session close) reads the clock and then
    waits for the store's lock, up to ``store.lock_timeout_seconds`` (at most
    120 s), so a record dated later can be appended before it. Here the freeze
    was read 90 s after the refusal and won the lock: the log the signer writes
    must still pass verify, and its times must not go back."""
    db = tmp_path / "state.db"
    store = SqliteStore(db, lock_timeout=120)
    store.migrate()
    agent, operator = AGENT, OPERATOR
    read_at = 1_800_000_000  # when the refusal read the clock, before its wait
    store.audit_event(
        audit_events.event(
            "freeze.set", operator, read_at + 90, scope="global", target="", reason="drill"
        )
    )
    refusal = audit_events.event("sign.refused", agent, read_at, reason="FROZEN", message="frozen")
    store.audit_event(refusal)
    store.close()
    reseal(db, audit_hsm)
    records = audit_log(db)
    assert [r["time"] for r in records] == [read_at + 90, read_at + 90]
    assert {k: v for k, v in records[1].items() if k not in ("time", "seq", "prev_root")} == {
        k: v for k, v in refusal.items() if k != "time"
    }
    proc = audit_verify(db, sealed.public_key, "--config", sealed.config)
    assert proc.returncode == 0, proc.stderr
    assert (
        audit_verify(
            db, sealed.public_key, "--config", sealed.config, "--max-time-skew", "0"
        ).returncode
        == 0
    )
