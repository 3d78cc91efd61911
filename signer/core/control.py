"""The operator's service: the kill switch and the audit log's checkpoints and proofs.

Operators cannot sign or approve; nothing here touches a payment key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from paywarden.hsm import Hsm, HsmError
from paywarden.policy.vocabulary import FreezeScope, FreezeSource
from paywarden.signer.auditlog import checkpoints, merkle
from paywarden.signer.config import Config
from paywarden.signer.core import audit_events
from paywarden.signer.core.canonical import clean_text
from paywarden.signer.core.session_input import parse_session_id
from paywarden.signer.errors import InvalidInput, NotFound, Reason, Unavailable
from paywarden.signer.identity import PRINCIPAL_ID, Principal
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.protocols import Store
from paywarden.signer.store.records import Checkpoint, Freeze, StoreError
from paywarden.signer.timekeeping import HighWater

log = logging.getLogger("paywarden.signer.core.control")

T = TypeVar("T")
SCOPES = ("global", "agent", "session", "key")
MAX_REASON = 1024


@dataclass(frozen=True, slots=True)
class InclusionProof:
    record: str
    leaf: bytes
    size: int
    root: bytes
    proof: list[bytes]


class ControlService:
    def __init__(
        self,
        config: Config,
        store: Store,
        hsm: Hsm,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        unfrozen: Callable[[str, str], None] | None = None,
    ) -> None:
        """``unfrozen(scope, target)`` is called after a freeze is lifted: the signing
        service resets what it counted for the breaker (``SigningService.operator_unfroze``)."""
        self._config = config
        self._store = store
        self._hsm = hsm
        self._metrics = metrics
        self._time = HighWater(clock, store.latest_audit_time())
        self._key_ids = {k.ref().key_id for k in config.keys}
        self._checkpoint_lock = threading.Lock()
        self._unfrozen = unfrozen

    def _now(self) -> int:
        return self._time.now()

    # -- kill switch ---------------------------------------------------------

    def _target(self, scope: str, target: str) -> str:
        if scope not in SCOPES:
            raise InvalidInput(Reason.STRING_INVALID, f"scope must be one of {', '.join(SCOPES)}")
        if scope == "global":
            if target:
                raise InvalidInput(Reason.STRING_INVALID, "a global freeze has no target")
            return ""
        if scope == "agent" and not PRINCIPAL_ID.fullmatch(target):
            raise InvalidInput(Reason.STRING_INVALID, "target is not an agent id")
        if scope == "session":
            return parse_session_id(target)
        if scope == "key" and target not in self._key_ids:
            raise InvalidInput(Reason.UNKNOWN_KEY, "target is not a payment key of this signer")
        return target

    def freeze(
        self, caller: Principal, scope: str, target: str, reason: str
    ) -> tuple[Freeze, bool]:
        target = self._target(scope, target)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._now()
        freeze = Freeze(
            FreezeScope(scope),
            target,
            reason,
            f"{caller.role}/{caller.id}",
            FreezeSource.OPERATOR,
            now,
        )
        event = audit_events.event(
            "freeze.set", caller, now, scope=scope, target=target, reason=reason
        )
        created = _store(lambda: self._store.set_freeze(freeze, event))
        if created:
            self._metrics.froze(scope, target, "operator", now)
            log.warning("freeze set", extra={"reason": reason})
        current = next(
            (f for f in self.freezes() if f.scope == scope and f.target == target), freeze
        )
        return current, created

    def unfreeze(self, caller: Principal, scope: str, target: str, reason: str) -> bool:
        target = self._target(scope, target)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._now()
        event = audit_events.event(
            "freeze.clear", caller, now, scope=scope, target=target, reason=reason
        )
        removed = _store(lambda: self._store.clear_freeze(scope, target, now, event))
        if removed and self._unfrozen is not None:
            self._unfrozen(scope, target)
        self.freezes()
        if removed:
            self._metrics.unfroze(scope, target)
            log.warning("freeze lifted", extra={"reason": reason})
        return removed

    def freezes(self) -> list[Freeze]:
        current = _store(self._store.freezes)
        counts: dict[str, int] = {}
        for f in current:
            counts[f.scope] = counts.get(f.scope, 0) + 1
        self._metrics.frozen_now(counts)
        return current

    # -- audit log -------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        """Signs the current tree head (None while the log is empty)."""
        with self._checkpoint_lock:
            size, root = _store(self._store.audit_head)
            last = _store(self._store.last_checkpoint)
            if last is not None and last.size == size:
                return last
            if size == 0:
                return None
            now = self._now()
            body = checkpoints.checkpoint_body(size, root, now, self._config.audit.key)
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
                self._config.audit.key,
                body.decode("utf-8"),
                checkpoints.encode_signature(signature),
            )
            _store(lambda: self._store.add_checkpoint(cp))
            return cp

    def audit_public_key_pem(self) -> str:
        try:
            return self._hsm.audit_public_key().spki_pem
        except HsmError:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the audit key cannot be read") from None

    def inclusion_proof(self, seq: int, size: int) -> InclusionProof:
        head, _ = _store(self._store.audit_head)
        size = size or head
        if not 1 <= seq <= size <= head:
            raise NotFound(Reason.STRING_INVALID, f"record {seq} is not in a tree of {size}")
        leaves = _store(lambda: self._store.audit_leaves(size))
        record = _store(lambda: self._store.audit_record(seq))
        return InclusionProof(
            record=record,
            leaf=leaves[seq - 1],
            size=size,
            root=merkle.root(leaves),
            proof=merkle.inclusion_proof(seq - 1, leaves),
        )

    def consistency_proof(self, first: int, second: int) -> tuple[bytes, bytes, list[bytes]]:
        head, _ = _store(self._store.audit_head)
        if not 0 < first <= second <= head:
            raise InvalidInput(
                Reason.STRING_INVALID, f"need 0 < first <= second <= {head} (the log's size)"
            )
        leaves = _store(lambda: self._store.audit_leaves(second))
        proof = merkle.consistency_proof(first, leaves)
        return merkle.root(leaves[:first]), merkle.root(leaves), proof


class Checkpointer:
    """Signs a checkpoint every ``checkpoint_every`` records or ``checkpoint_seconds``.

    ``before`` runs on every tick, before the checkpoint is considered: the signing
    service writes the refusal summaries that are due (``flush_due_refusals``), so
    they are sealed with the rest even if no Sign comes after them."""

    def __init__(
        self,
        control: ControlService,
        store: Store,
        config: Config,
        before: Callable[[], None] | None = None,
    ) -> None:
        self._control = control
        self._store = store
        self._before = before
        self._every = config.audit.checkpoint_every
        self._seconds = config.audit.checkpoint_seconds
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
                    self._control.checkpoint()
                    last_at = time.monotonic()
            except (StoreError, Unavailable) as exc:
                log.error("checkpoint failed: %s", exc)


def _store(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StoreError as exc:
        log.error("store error: %s", exc)
        raise Unavailable(Reason.STORE_UNAVAILABLE, "the state store is unavailable") from None
