"""Verification of the audit log.

Verification trusts nothing in the store but the audit public key: it
recomputes every leaf from the record bytes, checks that each record names
its own position (``seq``) and the tree head before it (``prev_root``), and
checks every signed checkpoint against the recomputed tree. The first record
that was edited, removed, reordered or added after the fact is named.

A log whose checkpoints were deleted and whose chain was recomputed is
self-consistent, so the checkpoints themselves must be required: a non-empty
log without one fails, and so does a log whose unsealed tail is longer than
the signer's checkpoint interval allows (the signer seals every
``audit.checkpoint_every`` records or ``audit.checkpoint_seconds``, and once
more when it stops). A tree head kept elsewhere (:class:`TrustedHead`) pins
history further: the log's first ``size`` records must hash to its root
(RFC 9162 consistency, checked by recomputing the prefix).

Record times never go back by more than ``time_skew`` seconds: a clock stepped
back (or a record moved) shows. The store stamps each record no earlier than
the one before it, so a log written by this version never goes back at all;
the skew allows for logs written before it did, where a record that read the
clock before waiting for the write lock could land after a later-dated one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import canonical, merkle
from paywarden.signer.auditlog.checkpoints import Checkpoint, check_checkpoint
from paywarden.signer.auditlog.explain import when

# A record's time may be this much below an earlier record's. The store no longer
# writes such records; logs written before it clamped times may hold them (a call
# read the clock, then waited for the write lock, up to store.lock_timeout_seconds).
TIME_SKEW = 60


@dataclass(frozen=True, slots=True)
class TrustedHead:
    """A tree head kept outside the log (``--trusted SIZE:ROOT`` or a checkpoint file)."""

    size: int
    root: str  # hex
    source: str  # where it came from, for the report


@dataclass(frozen=True, slots=True)
class SealLimits:
    """How much of the log may be unsealed: more means checkpoints were removed.

    ``records``: most records after the last checkpoint; ``seconds``: longest
    span of record times after it. None: not checked.
    """

    records: int | None = None
    seconds: float | None = None


@dataclass
class Report:
    records: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None
    unsealed: int = 0  # records after the last checkpoint
    trusted: list[TrustedHead] = field(default_factory=list)  # the heads the log matched
    advice: list[str] = field(default_factory=list)  # what may explain the problems, and what to do

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, seq: int | None, message: str) -> None:
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq
        self.problems.append(message)


Row = tuple[int, str, bytes | None]  # (seq, body, stored leaf hash or None for an export)


def verify(
    records: Iterable[Row],
    checkpoints: Iterable[Checkpoint],
    public_keys: ec.EllipticCurvePublicKey | Sequence[ec.EllipticCurvePublicKey],
    *,
    trusted: Sequence[TrustedHead] = (),
    limits: SealLimits | None = None,
    time_skew: int = TIME_SKEW,
) -> Report:
    """Checks every record (``records`` in row order, read once) and every checkpoint."""
    keys = [public_keys] if isinstance(public_keys, ec.EllipticCurvePublicKey) else public_keys
    checkpoints = sorted(checkpoints, key=lambda c: c.size)
    sizes = {c.size for c in checkpoints} | {t.size for t in trusted}
    report = Report()
    times: list[int | None] = []
    roots: dict[int, str] = {}  # tree heads at the checkpoint sizes, computed in one pass
    tree = merkle.Tree()
    latest: tuple[int, int] | None = None  # (time, position) of the latest time so far
    time_reported = False
    rows = iter(records)
    for position, (seq, body, stored_leaf) in enumerate(rows, start=1):
        try:
            parsed, leaf = check_record(position, seq, body, stored_leaf, tree.root_hex())
        except BadRecord as exc:
            report.bad(*_blame(position, str(exc)))
            report.records = position + sum(1 for _ in rows)
            break
        except (ValueError, TypeError, RecursionError):
            report.bad(position, f"record {position}: not in canonical form (edited)")
            report.records = position + sum(1 for _ in rows)
            break
        report.records = position
        at = parsed.get("time")
        if not isinstance(at, int) or isinstance(at, bool):
            times.append(None)
            if not time_reported:
                time_reported = True
                report.bad(position, f"record {position}: has no time in whole seconds (edited)")
        else:
            times.append(at)
            if latest is not None and at < latest[0] - time_skew and not time_reported:
                time_reported = True
                report.bad(position, _backwards(position, at, latest))
            if latest is None or at > latest[0]:
                latest = (at, position)
        tree.push(leaf)
        if position in sizes:
            roots[position] = tree.root_hex()
    judge(report, checkpoints, keys, trusted, roots, len(times), limits, times.__getitem__)
    return report


def _backwards(position: int, at: int, latest: tuple[int, int]) -> str:
    return (
        f"record {position}: its time {when(at)} is {latest[0] - at} seconds "
        f"before record {latest[1]}'s {when(latest[0])}: time went backwards "
        "(the clock was stepped back, or records were moved)"
    )


def judge(
    report: Report,
    checkpoints: Sequence[Checkpoint],
    keys: Sequence[ec.EllipticCurvePublicKey],
    trusted: Sequence[TrustedHead],
    roots: dict[int, str],
    good: int,
    limits: SealLimits | None,
    times_from: Callable[[slice], Sequence[int | None]],
    *,
    signatures_checked: bool = False,
) -> None:
    """The checks after the records: each checkpoint and trusted head against the
    tree heads of the first ``good`` records (those that passed), then the seal.
    ``signatures_checked``: every checkpoint's signature is known to verify."""
    intact = good == report.records
    last_sealed = 0
    sealed_ok = 0
    for cp in checkpoints:
        report.checkpoints += 1
        problem = None if signatures_checked else check_checkpoint(cp, keys)
        if problem is not None:
            report.bad(None, problem)
            continue
        if cp.size > good:
            if report.first_bad_seq is None:
                first = good + 1
                report.bad(first, f"record {first}: removed (checkpoint {cp.size} covers it)")
            continue
        if roots.get(cp.size) != cp.root:
            first = sealed_ok + 1
            report.bad(
                first,
                f"records {first} to {cp.size}: rewritten (checkpoint {cp.size} no longer "
                "matches the log)",
            )
            continue
        sealed_ok = cp.size
        last_sealed = max(last_sealed, cp.size)
    for head in trusted:
        if head.size > good:
            if intact:
                report.bad(
                    None,
                    f"trusted checkpoint {head.size} ({head.source}): the log holds only "
                    f"{good} records; records {good + 1} to {head.size} "
                    "were removed",
                )
            continue
        if roots.get(head.size) != head.root:
            report.bad(
                None,
                f"trusted checkpoint {head.size} ({head.source}): the log is not consistent "
                f"with it: its first {head.size} records hash to {roots.get(head.size)}, "
                f"not {head.root} (history was rewritten, or this is another log)",
            )
            continue
        report.trusted.append(head)
        last_sealed = max(last_sealed, head.size)
    report.unsealed = max(0, good - last_sealed)
    if intact:
        unsealed = times_from(slice(last_sealed, None))
        _check_sealed(report, checkpoints, last_sealed, good, unsealed, limits or SealLimits())


def _check_sealed(
    report: Report,
    checkpoints: Sequence[Checkpoint],
    sealed: int,
    n: int,
    unsealed_times: Sequence[int | None],
    limits: SealLimits,
) -> None:
    """A log the signer wrote is sealed: a checkpoint exists, and the tail after the
    last one (records ``sealed + 1`` to ``n``, with ``unsealed_times``) is no longer
    than the checkpoint interval allows."""
    if n == 0:
        return
    if not checkpoints:
        report.bad(
            None,
            f"no signed checkpoint: nothing seals these {n} records (the checkpoints were "
            "deleted, or the log was rewritten)",
        )
        report.advice.extend(_UNSEALED_CAUSES)
        report.advice.extend(
            (
                "If the signer's own logs show that, verify again once it has run long enough",
                "to seal. Never seal an unexplained log with `paywarden ctl checkpoint`: that",
                "signs whatever the store holds now.",
            )
        )
        return
    tail = n - sealed
    fixes = []
    if limits.records is not None and tail > limits.records:
        report.bad(
            None,
            f"records {sealed + 1} to {n}: {tail} records after the last checkpoint, more "
            f"than the {limits.records} the checkpoint interval allows",
        )
        fixes.append(f"--max-unsealed {tail}")
    tail_times = [t for t in unsealed_times if t is not None]
    if limits.seconds is not None and tail_times:
        span = max(tail_times) - tail_times[0]
        if span > limits.seconds:
            report.bad(
                None,
                f"records {sealed + 1} to {n}: unsealed across {span} seconds of record "
                f"times, longer than the {limits.seconds:g} seconds the checkpoint interval "
                "allows",
            )
            fixes.append(f"--max-unsealed-seconds {span}")
    if fixes:
        report.advice.extend(_UNSEALED_CAUSES)
        report.advice.extend(
            (
                "If the signer's own logs show such a crash or outage, it seals these records",
                "once it runs again with its HSM back. To accept the log as it is now, give",
                f"{' and '.join(fixes)}, or a checkpoint kept elsewhere that covers",
                f"records {sealed + 1} to {n} (--trusted SIZE:ROOT, --checkpoint FILE).",
                "Never seal an unexplained tail with `paywarden ctl checkpoint`: that signs",
                "whatever the store holds now.",
            )
        )


# What legitimately leaves records unsealed for longer than the checkpoint interval.
_UNSEALED_CAUSES = (
    "Unsealed records mean the checkpoints were deleted, or the signer could not seal them:",
    "  - it was killed before its next checkpoint (at a high rate, many records are",
    "    written between two ticks of its checkpointer);",
    "  - its HSM was out, so the audit key could not sign a checkpoint while records",
    "    were still appended.",
)


class BadRecord(Exception):
    """A record that is not where, or what, the signer wrote."""


def check_record(
    position: int, seq: int, body: str, stored_leaf: bytes | None, prev_root: str
) -> tuple[dict[str, Any], bytes]:
    """The parsed record and its leaf hash, or :class:`BadRecord` naming what is
    wrong with it. ``prev_root``: the tree head (hex) of the records before it."""
    if seq != position:
        how = "removed" if seq > position else "reordered or added"
        raise BadRecord(f"record {position}: missing or out of place ({how}; found seq {seq})")
    try:
        parsed, plain = canonical.parse(body)
    except ValueError:
        raise BadRecord(f"record {position}: not JSON (edited)") from None
    if not isinstance(parsed, dict) or not canonical.is_canonical(parsed, body, plain):
        raise BadRecord(f"record {position}: not in canonical form (edited)")
    if parsed.get("seq") != position:
        raise BadRecord(f"record {position}: names position {parsed.get('seq')} (reordered)")
    leaf = _sha256(b"\x00" + body.encode("utf-8")).digest()
    if stored_leaf is not None and leaf != stored_leaf:
        raise BadRecord(f"record {position}: its bytes no longer match its leaf hash (edited)")
    if parsed.get("prev_root") != prev_root:
        raise BadRecord(
            f"record {position}: does not follow the records before it "
            "(added after the fact, or an earlier record was rewritten)"
        )
    return parsed, leaf


_sha256 = hashlib.sha256


def _blame(position: int, problem: str) -> tuple[int, str]:
    """A broken link at ``position`` means record ``position - 1`` was rewritten
    (its own link held, so everything before it is intact) or this one was inserted."""
    if "does not follow" in problem and position > 1:
        prev = position - 1
        return prev, (
            f"records {prev} to {position}: record {prev} was rewritten after the fact, "
            f"or record {position} was inserted"
        )
    return position, problem
