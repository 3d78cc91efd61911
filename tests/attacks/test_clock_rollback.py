"""Attack: step the clock back to revive an expired session.

The system clock is an input the signer does not control (NTP steps, a VM
restore, libfaketime). Time used for decisions must never go below the latest
time already recorded, in this process or, after a restart, in the audit log.
The service's injectable clock stands in for the stepped system clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from paywarden.signer.api.startup import load_packs
from paywarden.signer.core.service import SigningService
from paywarden.signer.core.views import SignStatus
from paywarden.signer.errors import PaywardenError, Reason
from paywarden.signer.store.sqlite import SqliteStore

from tests.attacks.kit import AGENT, OPERATOR, PLANNER, audit_log, dataset_fields
from tests.helpers import Clock, Stack


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A store of its own: the times a test records are the floor of the next signer."""
    store = SqliteStore(tmp_path / "state.db")
    store.migrate()
    yield store
    store.close()


def _service(stack: Stack, store: SqliteStore, clock: Clock) -> SigningService:
    return SigningService(stack.config, store, stack.hsm, load_packs(stack.config), clock=clock.now)


def _times(store: SqliteStore) -> list[int]:
    return [record["time"] for record in audit_log(Path(store.path))]


def test_stepping_the_clock_back_does_not_revive_an_expired_session(
    stack: Stack, store: SqliteStore
) -> None:
    clock = Clock()
    service = _service(stack, store, clock)
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "5.00")], 60, [])
    sid = session.record.id
    assert (
        service.sign(AGENT, dataset_fields(sid, expires_at=int(clock.now()) + 30)).status
        is SignStatus.SIGNED
    )

    clock.advance(61)
    with pytest.raises(PaywardenError) as expired:
        service.sign(AGENT, dataset_fields(sid, expires_at=int(clock.now()) + 30))
    assert expired.value.reason == Reason.SESSION_EXPIRED

    clock.advance(-600)  # the clock steps back ten minutes
    with pytest.raises(PaywardenError) as still:
        service.sign(AGENT, dataset_fields(sid, expires_at=int(clock.now()) + 30))
    assert still.value.reason == Reason.SESSION_EXPIRED
    assert service.get_session(PLANNER, sid).state == "expired"
    # an operator's action in the same process is not dated in the past either
    control = service.freezes
    control.freeze(OPERATOR, "agent", "agent-2", "rollback drill")
    control.unfreeze(OPERATOR, "agent", "agent-2", "rollback drill over")

    times = _times(store)
    assert len(times) >= 5
    assert times == sorted(times), f"audit times went backwards: {times}"


def test_a_restart_with_the_clock_behind_keeps_the_session_expired(
    stack: Stack, store: SqliteStore
) -> None:
    clock = Clock()
    service = _service(stack, store, clock)
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "5.00")], 60, [])
    sid = session.record.id
    clock.advance(61)
    with pytest.raises(PaywardenError) as expired:
        service.sign(AGENT, dataset_fields(sid, expires_at=int(clock.now()) + 30))
    assert expired.value.reason == Reason.SESSION_EXPIRED

    behind = Clock(offset=-600)  # the signer restarts on a clock ten minutes behind
    restarted = _service(stack, store, behind)
    with pytest.raises(PaywardenError) as still:
        restarted.sign(AGENT, dataset_fields(sid, expires_at=int(behind.now()) + 30))
    assert still.value.reason == Reason.SESSION_EXPIRED
    times = _times(store)
    assert times == sorted(times), f"audit times went backwards: {times}"
