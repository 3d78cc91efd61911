"""Live policy reload: Control.ReloadPolicy and ConfirmReload, ``paywarden ctl reload``,
the pending reloads the store keeps, and the audit records of each."""

from __future__ import annotations

from pathlib import Path

from paywarden.policy.vocabulary import ReloadState
from paywarden.signer.core import audit_events
from paywarden.signer.store.records import PolicyReload
from paywarden.signer.store.sqlite import SqliteStore

# -- the store -------------------------------------------------------------------------


def _proposal(rid: str = "rld_1") -> PolicyReload:
    return PolicyReload(
        rid, "operator-1", 100, 700, "a" * 64, "b" * 64, (("shop.toml", "id = 'shop'\n"),),
        ({"subject": "agent agent-1", "field": "pack", "direction": "widens",
          "description": "newly covered"},),
        ReloadState.PENDING,
    )  # fmt: skip


def test_a_pending_reload_is_kept_and_applied_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store.propose_reload(_proposal(), audit_events.event("policy.reload", None, 100))
    store.close()
    store = SqliteStore(tmp_path / "s.db")  # a restart keeps it
    assert store.pending_reloads() == [_proposal()]
    files = [("shop.toml", "id = 'shop'\n")]
    audit = audit_events.event("policy.reload_confirm", None, 200)
    assert store.put_policy_in_force("b" * 64, files, 200, audit, confirm=("rld_1", "operator-2"))
    # Applied once: a second confirmation writes nothing.
    assert not store.put_policy_in_force("c" * 64, [], 201, audit, confirm=("rld_1", "x"))
    assert store.policy_in_force() == ("b" * 64, files)
    done = store.policy_reload("rld_1")
    assert done is not None and done.state is ReloadState.APPLIED
    assert (done.decided_by, done.decided_at) == ("operator-2", 200)
    assert store.pending_reloads() == []
    assert not store.settle_reload("rld_1", ReloadState.EXPIRED, 300, audit)
    assert store.audit_head()[0] == 2  # the proposal and the one confirmation


def test_an_expired_reload_cannot_be_applied(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store.propose_reload(_proposal(), audit_events.event("policy.reload", None, 100))
    audit = audit_events.event("policy.reload_expired", None, 800)
    assert store.settle_reload("rld_1", ReloadState.EXPIRED, 800, audit)
    assert not store.put_policy_in_force("b" * 64, [], 801, audit, confirm=("rld_1", "op"))
    assert store.policy_in_force() is None
    assert store.policy_reload("nope") is None
