"""Verification of the audit log at the speed of hashing: what a signed checkpoint vouches for.

:func:`verification.verify` parses every record and checks its canonical form,
position and link (``prev_root``): about 50 µs for a 3 KB decision record, most of
it in the JSON parser. A valid checkpoint signature over a root that the records'
own bytes hash to says more than those checks do: the records it covers are,
byte for byte, the ones the signer appended (SHA-256), and the signer appends only
canonical records that name their position and the tree head before them
(:func:`paywarden.signer.auditlog.append.grow`). So for the records under the last
checkpoint this pass recomputes every leaf and the tree (the hashes), checks each
stored leaf, position and time, and leaves the form and the links to the
checkpoints; the records after it are checked in full.

The result is the same report, or this pass hands over: when anything at all is
wrong (a record it cannot read quickly, a stored leaf, a checkpoint, a trusted
head, a time, the seal), :func:`verification.verify` runs over the whole log
again and its report, naming the first bad record as before, is the answer. A log
that passes here passes there with the same report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import merkle, verification
from paywarden.signer.auditlog.checkpoints import Checkpoint, check_checkpoint
from paywarden.signer.auditlog.verification import (
    TIME_SKEW,
    BadRecord,
    Report,
    Row,
    SealLimits,
    TrustedHead,
    check_record,
    judge,
)

# A row as the store gives it to this pass: the body as its UTF-8 bytes (or text).
RawRow = tuple[int, str | bytes, bytes | None]


def verify(
    records: Callable[[], Iterable[RawRow]],
    checkpoints: Iterable[Checkpoint],
    public_keys: ec.EllipticCurvePublicKey | Sequence[ec.EllipticCurvePublicKey],
    *,
    trusted: Sequence[TrustedHead] = (),
    limits: SealLimits | None = None,
    time_skew: int = TIME_SKEW,
) -> Report:
    """The report of :func:`verification.verify`. ``records``: the rows in order, read
    afresh (the same rows: one read transaction) each time it is called; twice at most."""
    keys = [public_keys] if isinstance(public_keys, ec.EllipticCurvePublicKey) else public_keys
    checkpoints = sorted(checkpoints, key=lambda c: c.size)
    report = _vouched(records(), checkpoints, keys, trusted, limits, time_skew)
    if report is not None and report.ok:
        return report
    return verification.verify(
        as_text(records()), checkpoints, keys, trusted=trusted, limits=limits, time_skew=time_skew
    )


def as_text(rows: Iterable[RawRow]) -> Iterator[Row]:
    """The rows with their bodies as text, for :func:`verification.verify` (bytes that
    are not UTF-8 come out changed, so that the record is named, not a traceback)."""
    for seq, body, leaf in rows:
        yield seq, body.decode("utf-8", "replace") if isinstance(body, bytes) else body, leaf


def _vouched(
    rows: Iterable[RawRow],
    checkpoints: Sequence[Checkpoint],
    keys: Sequence[ec.EllipticCurvePublicKey],
    trusted: Sequence[TrustedHead],
    limits: SealLimits | None,
    time_skew: int,
) -> Report | None:
    """The report if the log needs no closer look, else None."""
    if any(check_checkpoint(cp, keys) is not None for cp in checkpoints):
        return None
    vouched = checkpoints[-1].size if checkpoints else 0
    sizes = {c.size for c in checkpoints} | {t.size for t in trusted}
    roots: dict[int, str] = {}
    unsealed: list[int | None] = []  # times of the records after ``vouched``
    tree = merkle.Tree()
    sha256 = hashlib.sha256
    latest: int | None = None
    position = 0
    for position, (seq, body, stored_leaf) in enumerate(rows, start=1):
        if position <= vouched:
            if seq != position:
                return None
            try:
                data = body if isinstance(body, bytes) else body.encode("utf-8")
            except ValueError:
                return None
            leaf = sha256(b"\x00" + data).digest()
            if stored_leaf is not None and leaf != stored_leaf:
                return None
            at = _time(data, position)
        else:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            try:
                parsed, leaf = check_record(position, seq, text, stored_leaf, tree.root_hex())
            except (BadRecord, ValueError, TypeError, RecursionError):
                return None
            at = parsed.get("time")
            if not isinstance(at, int) or isinstance(at, bool):
                return None
            unsealed.append(at)
        if at is None or (latest is not None and at < latest - time_skew):
            return None
        if latest is None or at > latest:
            latest = at
        tree.push(leaf)
        if position in sizes:
            roots[position] = tree.root_hex()
    report = Report(records=position)
    judge(
        report,
        checkpoints,
        keys,
        trusted,
        roots,
        position,
        limits,
        lambda part: unsealed[max(0, (part.start or 0) - vouched) :],
        signatures_checked=True,
    )
    return report


_TAIL = json.JSONDecoder()


def _time(data: bytes, position: int) -> int | None:
    """The ``time`` of a record as the signer wrote it, read from the end of the top-level
    object (``prev_root``, ``seq`` and ``time`` sort near its end), or from the whole
    record when that does not parse on its own; None if it has none or names another
    position. For any other bytes the checkpoints fail and the full check decides."""
    tail: Any = None
    at = data.rfind(b'"prev_root":"')
    if at > 0 and data[at - 1] in b",{":
        # The quote after "," or "{" opens a key; "{" + the rest is one whole object
        # only if that key is the top-level object's.
        try:
            text = "{" + data[at:].decode("utf-8")
            tail, end = _TAIL.raw_decode(text)
            if end != len(text):
                tail = None
        except (ValueError, RecursionError):
            tail = None
    if not isinstance(tail, dict):
        try:
            tail = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(tail, dict):
            return None
    if tail.get("seq") != position:
        return None
    value = tail.get("time")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
