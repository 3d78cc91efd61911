"""The fast audit verifier (issue 10) gives the reports the full one gives.

``paywarden audit verify`` reads a log once, hashing, and lets the signed
checkpoints vouch for the form of the records they cover (``auditlog.vouched``);
anything wrong sends it back over the log with the full check
(``auditlog.verification``), which parses every record. Here, on logs built with
the signer's own append and checkpoint body and then tampered with in every way
the end-to-end tests use (and a few more), both give the same report, and the fast
one reads the log only once when it is intact; ``paywarden audit verify`` and its
``--full`` agree on a real store. The canonical-form test that the full check now
uses is compared with ``jcs`` itself on random values and texts.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.signer.auditlog import canonical, merkle, verification, vouched
from paywarden.signer.auditlog.append import AuditState, append
from paywarden.signer.auditlog.checkpoints import Checkpoint, checkpoint_body
from paywarden.signer.encoding import jcs
from paywarden.signer.store.sqlite import SqliteStore

from tests.support.cli import audit_verify

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
Row = tuple[int, str, bytes | None]


def _sign(body: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    r, s = utils.decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return base64.urlsafe_b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()


def _checkpoint(size: int, root: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> Checkpoint:
    body = checkpoint_body(size, root, 1000 + size, "audit.v1")
    return Checkpoint(size, root.hex(), 1000 + size, "audit.v1", body.decode(), _sign(body, key))


def _event(i: int) -> dict[str, Any]:
    """Records of different shapes: a nested ``prev_root`` after the top-level one, a
    record whose first key is ``prev_root``, non-ASCII and astral text, lists."""
    kinds: list[dict[str, Any]] = [
        {"action": "sign.decision", "decision": {"trace": [{"rule": "r", "limit": None}]}},
        {"action": "note", "untrusted": {"purpose": "café — 💸", "prev_root": "x", "seq": 9}},
        {"\U0001f4b8": "astral key", "\ue000": "private use key"},
        {"aaa": [1, 2, {"seq": 3}], "zzz": {"time": 5}},
        {},
    ]
    return {**kinds[i % len(kinds)], "time": 100 + i}


@dataclass
class SignedLog:
    rows: list[Row]
    checkpoints: list[Checkpoint]


def _log(n: int, every: int) -> SignedLog:
    state = AuditState()
    rows: list[Row] = []
    checkpoints = []
    for i in range(n):
        record, leaf, state = append(state, _event(i))
        rows.append((state.size, record, leaf))
        if state.size % every == 0:
            checkpoints.append(_checkpoint(state.size, state.root))
    return SignedLog(rows, checkpoints)


def _rechained(bodies: list[dict[str, Any]]) -> list[Row]:
    """A log whose records are these objects, each given its seq and prev_root."""
    frontier: merkle.Frontier = []
    rows: list[Row] = []
    for seq, obj in enumerate(bodies, start=1):
        body = jcs({**obj, "seq": seq, "prev_root": merkle.frontier_root(frontier).hex()})
        leaf = merkle.leaf_hash(body)
        rows.append((seq, body.decode(), leaf))
        frontier = merkle.frontier_append(frontier, leaf)
    return rows


def _seal(rows: list[Row], every: int) -> list[Checkpoint]:
    frontier: merkle.Frontier = []
    out = []
    for seq, body, _leaf in rows:
        frontier = merkle.frontier_append(frontier, merkle.leaf_hash(body.encode()))
        if seq % every == 0:
            out.append(_checkpoint(seq, merkle.frontier_root(frontier)))
    return out


@dataclass
class Reads:
    rows: list[Row]
    calls: int = 0

    def __call__(self) -> Iterator[vouched.RawRow]:
        self.calls += 1
        # as the store gives them: the body as UTF-8 bytes
        return ((s, b.encode("utf-8"), h) for s, b, h in self.rows)


def _both(log: SignedLog, **options: Any) -> tuple[verification.Report, verification.Report, Reads]:
    full = verification.verify(log.rows, log.checkpoints, KEY.public_key(), **options)
    reads = Reads(log.rows)
    fast = vouched.verify(reads, log.checkpoints, KEY.public_key(), **options)
    return full, fast, reads


def _same(full: verification.Report, fast: verification.Report) -> None:
    assert fast.problems == full.problems
    assert fast.first_bad_seq == full.first_bad_seq
    assert (fast.records, fast.checkpoints, fast.unsealed) == (
        full.records,
        full.checkpoints,
        full.unsealed,
    )
    assert fast.trusted == full.trusted
    assert fast.advice == full.advice


LIMITS = verification.SealLimits(records=20, seconds=10**6)


def test_an_intact_log_is_read_once_and_passes() -> None:
    log = _log(53, every=10)  # 50 sealed, 3 after the last checkpoint
    full, fast, reads = _both(log, limits=LIMITS)
    assert full.ok, full.problems
    _same(full, fast)
    assert reads.calls == 1
    assert fast.unsealed == 3


def test_an_empty_log_and_a_log_without_checkpoints() -> None:
    for log in (SignedLog([], []), SignedLog(_log(7, every=100).rows, [])):
        full, fast, _reads = _both(log, limits=LIMITS)
        _same(full, fast)
    assert not full.ok and "no signed checkpoint" in full.problems[0]


# Each takes the rows and checkpoints of an intact log of 53 records sealed every 10.
Tamper = Callable[[list[Row], list[Checkpoint]], None]


def _edit(position: int, old: str, new: str, *, releaf: bool = False) -> Tamper:
    def tamper(rows: list[Row], _cps: list[Checkpoint]) -> None:
        seq, body, leaf = rows[position - 1]
        assert old in body
        body = body.replace(old, new, 1)
        rows[position - 1] = (seq, body, merkle.leaf_hash(body.encode()) if releaf else leaf)

    return tamper


def _delete(position: int) -> Tamper:
    return lambda rows, _cps: rows.pop(position - 1) and None


def _swap_rows(a: int, b: int) -> Tamper:
    def tamper(rows: list[Row], _cps: list[Checkpoint]) -> None:
        rows[a - 1], rows[b - 1] = rows[b - 1], rows[a - 1]

    return tamper


def _forge_tail(rows: list[Row], _cps: list[Checkpoint]) -> None:
    """A record added by someone who could not recompute the tree head before it."""
    record, leaf, _state = append(AuditState(len(rows)), {"action": "forged", "time": 999})
    rows.append((len(rows) + 1, record, leaf))


def _leaf_column(position: int) -> Tamper:
    def tamper(rows: list[Row], _cps: list[Checkpoint]) -> None:
        seq, body, _leaf = rows[position - 1]
        rows[position - 1] = (seq, body, bytes(32))

    return tamper


def _checkpoint_root(index: int) -> Tamper:
    def tamper(_rows: list[Row], cps: list[Checkpoint]) -> None:
        cp = cps[index]
        cps[index] = Checkpoint(cp.size, "0" * 64, cp.at, cp.key_id, cp.body, cp.signature)

    return tamper


def _checkpoint_key(index: int) -> Tamper:
    def tamper(_rows: list[Row], cps: list[Checkpoint]) -> None:
        cp = cps[index]
        cps[index] = _checkpoint(cp.size, bytes.fromhex(cp.root), OTHER_KEY)

    return tamper


def _drop_checkpoints(rows: list[Row], cps: list[Checkpoint]) -> None:
    del cps[1:]


TAMPERINGS: dict[str, Tamper] = {
    "edited sealed record": _edit(12, '"time":111', '"time":112'),
    "edited sealed record, leaf recomputed": _edit(12, '"time":111', '"time":112', releaf=True),
    "edited unsealed record": _edit(52, '"time":151', '"time":150'),
    "edited unsealed record, leaf recomputed": _edit(52, '"time":151', '"time":150', releaf=True),
    "whitespace in a sealed record": _edit(7, ',"time"', ', "time"', releaf=True),
    "not JSON": _edit(23, "{", "[", releaf=True),
    "deleted sealed record": _delete(8),
    "deleted last record of a checkpoint": _delete(50),
    "deleted unsealed record": _delete(52),
    "reordered records": _swap_rows(3, 4),
    "reordered across a checkpoint": _swap_rows(10, 11),
    "appended forged record": _forge_tail,
    "stored leaf changed": _leaf_column(33),
    "checkpoint root changed": _checkpoint_root(2),
    "checkpoint signed by another key": _checkpoint_key(1),
    "checkpoints deleted": _drop_checkpoints,
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_a_tampered_log_gets_the_full_report(name: str) -> None:
    log = _log(53, every=10)
    TAMPERINGS[name](log.rows, log.checkpoints)
    full, fast, reads = _both(log, limits=LIMITS)
    assert not full.ok
    _same(full, fast)
    assert reads.calls == 2  # the full check named it


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    every=st.integers(1, 12),
    edits=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 4000), st.sampled_from('{}"a1 ,'))),
)
def test_random_byte_edits_get_the_same_report(
    n: int, every: int, edits: list[tuple[int, int, str]]
) -> None:
    log = _log(n, every)
    for row, offset, char in edits:
        if row < len(log.rows):
            seq, body, leaf = log.rows[row]
            at = offset % len(body)
            log.rows[row] = (seq, body[:at] + char + body[at + 1 :], leaf)
    full, fast, _reads = _both(log, limits=verification.SealLimits(records=every))
    _same(full, fast)


def test_time_going_back_in_an_authentic_log_is_still_named() -> None:
    """The signer's own clock stepped back: every record and checkpoint is genuine."""
    bodies = [{"action": "x", "time": t} for t in (100, 200, 300, 150, 400, 500)]
    rows = _rechained(bodies)
    log = SignedLog(rows, _seal(rows, 3))
    full, fast, _reads = _both(log, time_skew=60)
    assert full.first_bad_seq == 4 and "time went backwards" in full.problems[0]
    _same(full, fast)
    full, fast, reads = _both(log, time_skew=200)
    assert full.ok and reads.calls == 1
    _same(full, fast)


def test_a_record_without_a_time_is_still_named() -> None:
    rows = _rechained([{"action": "x", "time": 1}, {"action": "y"}, {"action": "z", "time": 2}])
    log = SignedLog(rows, _seal(rows, 3))
    full, fast, _reads = _both(log)
    assert full.first_bad_seq == 2 and "no time in whole seconds" in full.problems[0]
    _same(full, fast)


def test_an_unsealed_tail_too_long_is_still_named() -> None:
    log = _log(53, every=10)
    for limits, says in (
        (verification.SealLimits(records=2), "3 records after the last checkpoint"),
        (verification.SealLimits(seconds=1), "unsealed across 2 seconds"),
    ):
        full, fast, _reads = _both(log, limits=limits)
        assert says in full.problems[0]
        _same(full, fast)


def test_trusted_heads_matched_and_not() -> None:
    log = _log(53, every=10)
    state = AuditState()
    for i in range(45):
        _record, _leaf, state = append(state, _event(i))
    good = verification.TrustedHead(45, state.root.hex(), "kept")
    bad = verification.TrustedHead(45, "0" * 64, "forged")
    beyond = verification.TrustedHead(60, state.root.hex(), "later")
    full, fast, reads = _both(log, trusted=[good], limits=LIMITS)
    assert full.ok and fast.trusted == [good] and reads.calls == 1
    _same(full, fast)
    after = [s for s in log.rows if s[0] <= 52]
    full, fast, _reads = _both(SignedLog(after, log.checkpoints), trusted=[good], limits=LIMITS)
    _same(full, fast)
    for head in (bad, beyond):
        full, fast, _reads = _both(log, trusted=[head], limits=LIMITS)
        assert not full.ok
        _same(full, fast)


def test_a_signed_malformed_record_is_named_only_by_the_full_check() -> None:
    """What the checkpoints vouch for: a record the signer itself wrote in another form
    (never by this code) passes the default check and is named by ``--full``."""
    rows = _rechained([{"action": "x", "time": 1}, {"action": "y", "time": 2}])
    seq, body, _leaf = rows[1]
    spaced = body.replace(",", ", ")
    rows[1] = (seq, spaced, merkle.leaf_hash(spaced.encode()))
    log = SignedLog(rows, _seal(rows, 2))
    full, fast, reads = _both(log)
    assert fast.ok and reads.calls == 1
    assert full.problems == ["record 2: not in canonical form (edited)"]


def test_export_rows_with_text_bodies_verify_too() -> None:
    log = _log(23, every=5)
    report = vouched.verify(lambda: iter(log.rows), log.checkpoints, [KEY.public_key()])
    assert report.ok and report.records == 23


# -- the command line, on a real store ---------------------------------------------------------


@pytest.fixture
def store_file(tmp_path: Path) -> tuple[Path, Path]:
    """A real SQLite store with 34 records (30 sealed, every 10) and the audit key's PEM."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.migrate()
    try:
        for i in range(34):
            if i % 3:
                store.audit_event(_event(i))
            else:
                with store.payment_tx() as tx:
                    tx.audit(_event(i))
            size, root = store.audit_head()
            if size % 10 == 0:
                store.add_checkpoint(_checkpoint(size, root))
    finally:
        store.close()
    pem = tmp_path / "audit.pem"
    pem.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, pem


LIMIT_ARGS = ("--max-unsealed", "20", "--max-unsealed-seconds", "1000000", "--max-time-skew", "0")


def test_verify_and_verify_full_agree_on_a_real_store(store_file: tuple[Path, Path]) -> None:
    db, pem = store_file
    fast = audit_verify(db, pem, *LIMIT_ARGS)
    full = audit_verify(db, pem, *LIMIT_ARGS, "--full")
    assert fast.returncode == full.returncode == 0, fast.stderr + full.stderr
    assert fast.stdout == full.stdout
    assert "34 records, 3 signed checkpoints, 4 records after the last checkpoint" in fast.stdout


def test_verify_and_verify_full_name_the_same_edited_record(
    store_file: tuple[Path, Path],
) -> None:
    db, pem = store_file
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_update")
    body = conn.execute("SELECT body FROM audit_log WHERE seq = 17").fetchone()[0]
    edited = body.replace('"time":116', '"time":117')
    assert edited != body
    conn.execute(
        "UPDATE audit_log SET body = ?, leaf = ? WHERE seq = 17",
        (edited, merkle.leaf_hash(edited.encode())),
    )
    conn.commit()
    conn.close()
    fast = audit_verify(db, pem, *LIMIT_ARGS)
    full = audit_verify(db, pem, *LIMIT_ARGS, "--full")
    assert fast.returncode == full.returncode == 1
    assert fast.stderr == full.stderr
    assert "first bad record 17" in fast.stderr


# -- the canonical-form test against jcs ----------------------------------------------------------

_MAX_SAFE = 2**53 - 1
_chars = st.characters(codec="utf-8") | st.sampled_from(["\ue000", "\uffff", "\U0001f4b8", "\x7f"])
_keys = st.text(alphabet=_chars, max_size=4)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False),
    st.text(alphabet=_chars, max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


def _jcs_says(parsed: Any, body: str) -> bool | str:
    try:
        return jcs(parsed).decode("utf-8") == body
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__


def _fast_says(body: str) -> bool | str:
    try:
        parsed, plain = canonical.parse(body)
        return canonical.is_canonical(parsed, body, plain)
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(_keys, _values, max_size=6), style=st.integers(0, 4))
def test_the_fast_canonical_test_agrees_with_jcs(value: dict[str, Any], style: int) -> None:
    texts = [
        json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        json.dumps(value, ensure_ascii=False, sort_keys=True),
        json.dumps(value, separators=(",", ":"), sort_keys=True),
        json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    ]
    try:
        texts.append(jcs(value).decode("utf-8"))
    except (TypeError, ValueError):
        pass
    body = texts[style % len(texts)]
    assert _fast_says(body) == _jcs_says(json.loads(body), body), body


@pytest.mark.parametrize(
    "body",
    [
        '{"a":1.0}',
        '{"a":1e2}',
        '{"a":NaN}',
        '{"a":9007199254740992}',
        '{"a":9007199254740991}',
        '{"\\ud800":1}',
        '{"a":"\\ud800"}',
        '{"a":1,"a":1}',
        '{"\ue000":1,"\U0001f4b8":2}',
        '{"\U0001f4b8":2,"\ue000":1}',
        '{"a":"\\u00e9"}',
        '{"a":"é"}',
        '{"a":"\\u001f"}',
        '{"a":"\\/"}',
        "[1]",
        '{"a":true,"b":null}',
    ],
)
def test_the_fast_canonical_test_on_edge_cases(body: str) -> None:
    assert _fast_says(body) == _jcs_says(json.loads(body), body)
