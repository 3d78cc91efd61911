"""The audit log's checkpoints and proofs (operators), and the thread that seals it.

Operators cannot sign or approve; nothing here touches a payment key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from paywarden.hsm import HsmError
from paywarden.signer.auditlog import checkpoints, subtrees
from paywarden.signer.core.deps import Deps, control_store_call
from paywarden.signer.errors import InvalidInput, NotFound, Reason, Unavailable
from paywarden.signer.store.records import Checkpoint, StoreError

# The kill switch and the checkpoints log under the name they had before the split.
log = logging.getLogger("paywarden.signer.core.control")


@dataclass(frozen=True, slots=True)
class InclusionProof:
    record: str
    leaf: bytes
    size: int
    root: bytes
    proof: list[bytes]


class Checkpoints:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store
        self._hsm = deps.hsm
        self._checkpoint_lock = threading.Lock()

    def checkpoint(self) -> Checkpoint | None:
        """Signs the current tree head (None while the log is empty). Replicas sharing a
        store take turns: while another makes one, this one returns the last stored."""
        with self._checkpoint_lock:
            made = control_store_call(lambda: self._store.in_checkpoint_turn(self._make))
            return made if made is not None else control_store_call(self._store.last_checkpoint)

    def _make(self) -> Checkpoint | None:
        size, root = control_store_call(self._store.audit_head)
        last = control_store_call(self._store.last_checkpoint)
        if last is not None and last.size == size:
            return last
        if size == 0:
            return None
        now = self._deps.now()
        key = self._deps.audit.key
        body = checkpoints.checkpoint_body(size, root, now, key)
        try:
            signature = self._hsm.sign_checkpoint(body)
        except HsmError:
            raise Unavailable(
                Reason.HSM_UNAVAILABLE, "the HSM cannot sign a checkpoint now"
            ) from None
        cp = Checkpoint(
            size,
            root.hex(),
            now,
            key,
            body.decode("utf-8"),
            checkpoints.encode_signature(signature),
        )
        control_store_call(lambda: self._store.add_checkpoint(cp))
        return cp

    def audit_public_key_pem(self) -> str:
        try:
            return self._hsm.audit_public_key().spki_pem
        except HsmError:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the audit key cannot be read") from None

    def inclusion_proof(self, seq: int, size: int) -> InclusionProof:
        head, _ = control_store_call(self._store.audit_head)
        size = size or head
        if not 1 <= seq <= size <= head:
            raise NotFound(Reason.STRING_INVALID, f"record {seq} is not in a tree of {size}")
        leaf = ((0, seq - 1),)
        runs = subtrees.inclusion_nodes(seq - 1, size)
        top = subtrees.root_nodes(size)
        subtree = self._subtrees([leaf, top, *runs])
        record = control_store_call(lambda: self._store.audit_record(seq))
        return InclusionProof(
            record=record,
            leaf=subtree(0, seq - 1),
            size=size,
            root=subtrees.fold(top, subtree),
            proof=subtrees.folds(runs, subtree),
        )

    def consistency_proof(self, first: int, second: int) -> tuple[bytes, bytes, list[bytes]]:
        head, _ = control_store_call(self._store.audit_head)
        if not 0 < first <= second <= head:
            raise InvalidInput(
                Reason.STRING_INVALID, f"need 0 < first <= second <= {head} (the log's size)"
            )
        runs = subtrees.consistency_nodes(first, second)
        old, new = subtrees.root_nodes(first), subtrees.root_nodes(second)
        subtree = self._subtrees([old, new, *runs])
        return (
            subtrees.fold(old, subtree),
            subtrees.fold(new, subtree),
            subtrees.folds(runs, subtree),
        )

    def _subtrees(self, runs: list[subtrees.Run]) -> subtrees.Subtree:
        """The stored nodes these runs read, fetched at once: O(log n) rows by key."""
        nodes = subtrees.needed(runs)
        stored = control_store_call(lambda: self._store.audit_subtrees(nodes))
        return lambda level, index: stored[level, index]


class Checkpointer:
    """Signs a checkpoint every ``checkpoint_every`` records or ``checkpoint_seconds``.

    ``before`` runs on every tick, before the checkpoint is considered: the signing
    path writes the refusal summaries that are due (``Refusals.flush_due``), so
    they are sealed with the rest even if no Sign comes after them."""

    def __init__(
        self, checkpoints: Checkpoints, deps: Deps, before: Callable[[], None] | None = None
    ) -> None:
        self._checkpoints = checkpoints
        self._store = deps.store
        self._before = before
        self._every = deps.audit.checkpoint_every
        self._seconds = deps.audit.checkpoint_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        last_at = time.monotonic()
        tick = min(1.0, self._seconds)
        while not self._stop.wait(tick):
            try:
                if self._before is not None:
                    self._before()
                size, _ = self._store.audit_head()
                sealed = self._store.last_checkpoint()
                last = sealed.size if sealed is not None else 0
                due = time.monotonic() - last_at >= self._seconds
                if size > last and (size - last >= self._every or due):
                    self._checkpoints.checkpoint()
                    last_at = time.monotonic()
            except (StoreError, Unavailable) as exc:
                log.error("checkpoint failed: %s", exc)
