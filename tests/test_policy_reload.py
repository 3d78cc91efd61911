"""Live policy reload: Control.ReloadPolicy and ConfirmReload, ``paywarden ctl reload``,
the pending reloads the store keeps, and the audit records of each."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.policy import load_pack_dir
from paywarden.policy.packs import build_pack_set, parse_pack
from paywarden.policy.vocabulary import Asset, ReloadState
from paywarden.signer.core import audit_events
from paywarden.signer.core.policy_set import PolicySet
from paywarden.signer.core.policy_start import StartingPacks, StartRefused, starting_packs
from paywarden.signer.core.reloads import PENDING_SECONDS
from paywarden.signer.errors import Denied, Forbidden, InvalidInput, PreconditionFailed, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import PolicyReload
from paywarden.signer.store.sqlite import SqlStore
from paywarden.v1 import control_pb2, control_pb2_grpc

from tests.conftest import MakeStack
from tests.helpers import Pki, ServeProcess, TestToken, reason_of, serve, write_config
from tests.support.backends import Stores
from tests.support.cli import ctl, paywarden, pki_script
from tests.support.clients import Api, served_api, signed
from tests.support.intents import intent_fields, payment_request
from tests.support.refusals import refused
from tests.support.sessions import open_session

# The store-level tests and the in-process stacks run on SQLite and on PostgreSQL; the
# tests against paywarden serve run on SQLite.
pytestmark = pytest.mark.both_backends

# -- the store -------------------------------------------------------------------------


def _proposal(rid: str = "rld_1") -> PolicyReload:
    return PolicyReload(
        rid, "operator-1", 100, 700, "a" * 64, "b" * 64, (("shop.toml", "id = 'shop'\n"),),
        ({"subject": "agent agent-1", "field": "pack", "direction": "widens",
          "description": "newly covered"},),
        ReloadState.PENDING,
    )  # fmt: skip


def test_a_pending_reload_is_kept_and_applied_once(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.propose_reload(_proposal(), audit_events.event("policy.reload", None, 100))
    store.close()
    store = stores.open(tmp_path / "s.db")  # a restart keeps it
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


def test_an_expired_reload_cannot_be_applied(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.propose_reload(_proposal(), audit_events.event("policy.reload", None, 100))
    audit = audit_events.event("policy.reload_expired", None, 800)
    assert store.settle_reload("rld_1", ReloadState.EXPIRED, 800, audit)
    assert not store.put_policy_in_force("b" * 64, [], 801, audit, confirm=("rld_1", "op"))
    assert store.policy_in_force() is None
    assert store.policy_reload("nope") is None


# -- a real signer ---------------------------------------------------------------------

SHOP = """
id = "shop"
version = 1
agents = ["agent-1"]
{guard}
[assets.USD]
keys = ["payments.v1"]
max_per_payment = "{most}"

[payees]
allow_patterns = ["[a-z-]+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "1000.00" }}
"""
GUARD = "widening_needs_second_operator = true\n"


def shop(most: str, *, version: int = 1, guarded: bool = False) -> str:
    """The pack of agent-1: at most ``most`` USD per payment."""
    text = SHOP.format(most=most, guard=GUARD if guarded else "")
    return text.replace("version = 1", f"version = {version}")


@contextmanager
def reloading_signer(
    tmp_path: Path, token: TestToken, pki: Pki, pack: str
) -> Iterator[tuple[ServeProcess, Api, Path]]:
    """``paywarden serve`` with ``pack`` as its one pack, the client, and the pack's file."""
    config = write_config(tmp_path, token, pki, packs={"shop.toml": pack})
    with serve(config) as srv, served_api(srv, pki) as api:
        yield srv, api, tmp_path / "policy" / "shop.toml"


def pays(api: Api, session: str, amount: str) -> str | None:
    """None when agent-1's payment of ``amount`` is signed, else the refusal's reason."""
    answer = api.answer(payment_request(session, payee="acme", amount=amount).intent)
    if isinstance(answer, grpc.RpcError):
        return reason_of(answer)
    signed(answer)
    return None


def reload_status(call: Any, request: Any) -> tuple[grpc.StatusCode, str | None, str]:
    """The status, reason code and message of a refused ``call(request)``."""
    err = refused(call, request, timeout=30)
    return err.code(), reason_of(err), err.details() or ""


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    """The audit log of the signer in ``tmp_path``, through ``paywarden audit export``."""
    out = tmp_path / "audit.jsonl"
    proc = paywarden("audit", "export", "--db", tmp_path / "state.db", "--out", out)
    assert proc.returncode == 0, proc.stderr
    items = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return [json.loads(i["record"]) for i in items if i["kind"] == "record"]


def reload_records(tmp_path: Path) -> list[dict[str, Any]]:
    """The policy reload records of the audit log."""
    return [r for r in audit_records(tmp_path) if r["action"].startswith("policy.reload")]


def test_an_invalid_pack_changes_nothing(tmp_path: Path, token: TestToken, pki: Pki) -> None:
    with reloading_signer(tmp_path, token, pki, shop("10.00")) as (_srv, api, file):
        session = open_session(api.planner, "agent-1", "100.00")
        before = api.control().ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        assert before.state == control_pb2.RELOAD_UNCHANGED
        file.write_text(shop("50.00").replace("max_per_payment", "max_per_paymnt"), "utf-8")
        code, reason, details = reload_status(
            api.control().ReloadPolicy, control_pb2.ReloadPolicyRequest()
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POLICY_PACK_INVALID")
        assert "shop.toml: field assets.USD.max_per_paymnt" in details
        assert "nothing changed" in details
        # Decided as before: 10.00 at most.
        assert pays(api, session, "10.00") is None
        assert pays(api, session, "10.01") == "AMOUNT_ABOVE_MAX"
    records = reload_records(tmp_path)
    assert [(r["outcome"], r.get("reason")) for r in records] == [
        ("unchanged", None),
        ("rejected", "POLICY_PACK_INVALID"),
    ]
    assert records[1]["old_sha256"] == before.old_sha256 and "new_sha256" not in records[1]
    bad = (tmp_path / "policy" / "shop.toml").read_bytes()
    assert records[1]["new_files"] == [{"file": "shop.toml", "sha256": sha256(bad).hexdigest()}]
    assert "max_per_paymnt" in records[1]["error"]


def test_a_narrowing_reload_decides_the_next_sign(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    with reloading_signer(tmp_path, token, pki, shop("10.00")) as (_srv, api, file):
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "8.00") is None
        file.write_text(shop("5.00", version=2), "utf-8")
        resp = api.control().ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        assert resp.state == control_pb2.RELOAD_APPLIED and not resp.widens
        assert [(c.subject, c.field, c.direction, c.description) for c in resp.changes] == [
            ("agent agent-1", "version", "neutral", "version 1 -> 2"),
            ("agent agent-1", "assets.USD.max_per_payment", "narrows",
             "lowered from 10.00 to 5.00"),
        ]  # fmt: skip
        assert [(p.id, p.version) for p in resp.old_packs] == [("shop", 1)]
        assert [(p.id, p.version) for p in resp.new_packs] == [("shop", 2)]
        assert resp.old_sha256 != resp.new_sha256
        # The session opened under version 1 fits version 2: decided by it at once.
        assert pays(api, session, "8.00") == "AMOUNT_ABOVE_MAX"
        assert pays(api, session, "5.00") is None
    (record,) = reload_records(tmp_path)
    assert record["outcome"] == "applied" and record["widens"] is False
    assert (record["old_sha256"], record["new_sha256"]) == (resp.old_sha256, resp.new_sha256)
    assert [p["sha256"] for p in record["new_packs"]] == [resp.new_packs[0].sha256]


def test_a_widening_reload_is_reported_by_ctl_reload(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    with reloading_signer(tmp_path, token, pki, shop("10.00")) as (srv, api, file):
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "30.00") == "AMOUNT_ABOVE_MAX"
        file.write_text(shop("50.00"), "utf-8")
        proc = ctl(srv, pki, "reload")
        assert proc.returncode == 0, proc.stderr
        assert "  WIDENS   assets.USD.max_per_payment: raised from 10.00 to 50.00" in proc.stdout
        assert "widens: yes" in proc.stdout and "applied: in force" in proc.stdout
        assert pays(api, session, "30.00") is None
    (record,) = reload_records(tmp_path)
    assert record["widens"] is True and record["needs_second_operator"] is False
    assert record["widening"] == [
        {"subject": "agent agent-1", "field": "assets.USD.max_per_payment",
         "direction": "widens", "description": "raised from 10.00 to 50.00"},
    ]  # fmt: skip
    assert record["actor"] == {"role": "operator", "id": "operator-1"}


@pytest.fixture
def two_operators(pki_copy: Pki) -> Pki:
    """The run's CA with a second operator, operator-2."""
    made = pki_script("issue", "--dir", pki_copy.dir, "--role", "operator", "--id", "operator-2")
    assert made.returncode == 0, made.stderr
    return pki_copy


def test_a_guarded_widening_waits_for_a_second_operator(
    tmp_path: Path, token: TestToken, two_operators: Pki
) -> None:
    pki = two_operators
    with reloading_signer(tmp_path, token, pki, shop("10.00", guarded=True)) as (srv, api, file):
        session = open_session(api.planner, "agent-1", "100.00")
        # The new text drops the requirement: the pack in force still asks for it.
        file.write_text(shop("50.00"), "utf-8")
        first = api.control().ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        assert first.state == control_pb2.RELOAD_PENDING and first.reload_id.startswith("rld_")
        assert first.widens and first.needs_second_operator and first.proposed_by == "operator-1"
        assert pays(api, session, "30.00") == "AMOUNT_ABOVE_MAX"  # nothing changed yet
        confirm = control_pb2.ConfirmReloadRequest(
            reload_id=first.reload_id, new_sha256=first.new_sha256
        )
        code, reason, _ = reload_status(api.control().ConfirmReload, confirm)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "RELOAD_SAME_OPERATOR")
        assert pays(api, session, "30.00") == "AMOUNT_ABOVE_MAX"
        # What is confirmed is what was proposed, not what the directory holds by then.
        file.write_text(shop("1000.00"), "utf-8")
        proc = ctl(srv, pki, "reload", "--confirm", first.reload_id, operator="operator-2")
        assert proc.returncode == 0, proc.stderr
        assert f"confirmed {first.reload_id} (proposed by operator-1): in force" in proc.stdout
        assert pays(api, session, "30.00") is None
        assert pays(api, session, "50.01") == "AMOUNT_ABOVE_MAX"
        again = ctl(srv, pki, "reload", "--confirm", first.reload_id, operator="operator-2")
        assert again.returncode == 1 and "RELOAD_NOT_PENDING" in again.stderr
    records = reload_records(tmp_path)
    assert [(r["action"], r["outcome"], r["actor"]["id"]) for r in records] == [
        ("policy.reload", "pending", "operator-1"),
        ("policy.reload_confirm", "rejected", "operator-1"),
        ("policy.reload_confirm", "applied", "operator-2"),
        ("policy.reload_confirm", "rejected", "operator-2"),
    ]
    proposed, same, applied, _ = records
    assert proposed["reload_id"] == applied["reload_id"] == first.reload_id
    assert same["reason"] == "RELOAD_SAME_OPERATOR"
    assert (applied["old_sha256"], applied["new_sha256"]) == (first.old_sha256, first.new_sha256)
    assert applied["proposed_by"] == "operator-1" and applied["widens"] is True


def test_the_second_operator_reviews_what_a_reload_changes_and_confirms_that(
    tmp_path: Path, token: TestToken, two_operators: Pki
) -> None:
    pki = two_operators
    with reloading_signer(tmp_path, token, pki, shop("10.00", guarded=True)) as (srv, api, file):
        file.write_text(shop("50.00", guarded=True), "utf-8")
        first = api.control().ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        assert first.state == control_pb2.RELOAD_PENDING
        shown = ctl(srv, pki, "reload", "--show", first.reload_id, operator="operator-2")
        assert shown.returncode == 3, shown.stderr
        assert f"reload {first.reload_id}, proposed by operator-1:" in shown.stdout
        assert f"packs read:            set {first.new_sha256}" in shown.stdout
        assert "  WIDENS   assets.USD.max_per_payment: raised from 10.00 to 50.00" in shown.stdout
        with pki.channel(srv.addr, "operator", "operator-2") as channel:
            second = control_pb2_grpc.ControlStub(channel)
            got = second.GetReload(control_pb2.GetReloadRequest(reload_id=first.reload_id))
            assert (got.state, got.proposed_by) == (control_pb2.RELOAD_PENDING, "operator-1")
            assert (got.old_sha256, got.new_sha256) == (first.old_sha256, first.new_sha256)
            assert got.expires_at == first.expires_at and got.needs_second_operator
            assert [c.field for c in got.changes] == [c.field for c in first.changes]
            code, reason, _ = reload_status(
                second.GetReload, control_pb2.GetReloadRequest(reload_id="rld_" + "0" * 32)
            )
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RELOAD_NOT_FOUND")
            blind = control_pb2.ConfirmReloadRequest(reload_id=first.reload_id)
            code, _, details = reload_status(second.ConfirmReload, blind)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "new_sha256 is empty" in details
            other = control_pb2.ConfirmReloadRequest(
                reload_id=first.reload_id, new_sha256=first.old_sha256
            )
            code, reason, details = reload_status(second.ConfirmReload, other)
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RELOAD_NOT_REVIEWED")
            assert f"would put in force ({first.new_sha256})" in details
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "30.00") == "AMOUNT_ABOVE_MAX"  # nothing changed
        done = ctl(srv, pki, "reload", "--confirm", first.reload_id, operator="operator-2")
        assert done.returncode == 0, done.stderr
        printed = done.stdout.index("  WIDENS   assets.USD.max_per_payment")
        assert printed < done.stdout.index(f"confirming set {first.new_sha256}, as shown above")
        assert pays(api, session, "30.00") is None
        settled = api.control().GetReload(
            control_pb2.GetReloadRequest(reload_id=first.reload_id), timeout=30
        )
        assert settled.state == control_pb2.RELOAD_SETTLED and not settled.changes
        again = ctl(srv, pki, "reload", "--show", first.reload_id, operator="operator-2")
        assert again.returncode == 1 and "settled: no longer pending" in again.stdout
    refused_ = [r for r in reload_records(tmp_path) if r.get("reason") == "RELOAD_NOT_REVIEWED"]
    assert len(refused_) == 1 and refused_[0]["actor"]["id"] == "operator-2"


def test_a_pending_reload_goes_stale_when_the_set_in_force_changes(
    tmp_path: Path, token: TestToken, two_operators: Pki
) -> None:
    pki = two_operators
    with reloading_signer(tmp_path, token, pki, shop("10.00", guarded=True)) as (srv, api, file):
        file.write_text(shop("50.00", guarded=True), "utf-8")
        proposed = ctl(srv, pki, "reload")
        assert proposed.returncode == 3, proposed.stderr  # pending: nothing changed yet
        found = re.search(r"^pending (rld_[0-9a-f]{32}): nothing changed", proposed.stdout, re.M)
        assert found is not None, proposed.stdout
        reload_id = found.group(1)
        assert f"`paywarden ctl reload --confirm {reload_id}`" in proposed.stdout
        file.write_text(shop("5.00", guarded=True), "utf-8")  # narrows: applied at once
        narrowed = ctl(srv, pki, "reload")
        assert narrowed.returncode == 0 and "applied: in force" in narrowed.stdout
        reviewed = re.search(r"^packs read: +set ([0-9a-f]{64})", proposed.stdout, re.M)
        assert reviewed is not None, proposed.stdout
        with pki.channel(srv.addr, "operator", "operator-2") as channel:
            second = control_pb2_grpc.ControlStub(channel)
            code, reason, _ = reload_status(
                second.ConfirmReload,
                control_pb2.ConfirmReloadRequest(reload_id=reload_id, new_sha256=reviewed[1]),
            )
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RELOAD_STALE")
            code, reason, _ = reload_status(
                second.ConfirmReload,
                control_pb2.ConfirmReloadRequest(reload_id="rld_" + "0" * 32, new_sha256="0" * 64),
            )
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RELOAD_NOT_FOUND")
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "5.01") == "AMOUNT_ABOVE_MAX"


def test_a_restart_does_not_put_a_guarded_widening_in_force(
    tmp_path: Path, token: TestToken, two_operators: Pki
) -> None:
    pki = two_operators
    config = write_config(tmp_path, token, pki, packs={"shop.toml": shop("10.00", guarded=True)})
    file = tmp_path / "policy" / "shop.toml"
    with serve(config) as srv, served_api(srv, pki) as api:
        file.write_text(shop("50.00", guarded=True), "utf-8")
        proposed = api.control().ReloadPolicy(control_pb2.ReloadPolicyRequest(), timeout=30)
        assert proposed.state == control_pb2.RELOAD_PENDING
    # The directory now holds the wider pack: a restart runs the set in force before.
    with serve(config) as srv, served_api(srv, pki) as api:
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "30.00") == "AMOUNT_ABOVE_MAX"
        # The pending reload survived the restart; operator-2 confirms it.
        proc = ctl(srv, pki, "reload", "--confirm", proposed.reload_id, operator="operator-2")
        assert proc.returncode == 0, proc.stderr
        assert pays(api, session, "30.00") is None
    # Once confirmed, a restart runs the directory's packs.
    with serve(config) as srv, served_api(srv, pki) as api:
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "30.00") is None
    loads = [r for r in audit_records(tmp_path) if r["action"] == "policy.load"]
    assert [(r.get("held"), r.get("widens")) for r in loads] == [
        (None, None),  # the first start: nothing recorded in force before
        (True, True),
        (None, None),  # the directory is the set in force
    ]
    assert loads[1]["sha256"] == proposed.old_sha256
    assert loads[1]["old_sha256"] == proposed.old_sha256
    # The held start names the directory's set too: the one waiting for operator-2.
    assert loads[1]["new_sha256"] == proposed.new_sha256
    assert [p["sha256"] for p in loads[1]["new_packs"]] == [proposed.new_packs[0].sha256]
    assert loads[0]["new_sha256"] == loads[0]["sha256"]
    assert loads[2]["new_sha256"] == loads[2]["sha256"]
    assert loads[2]["sha256"] == loads[2]["old_sha256"] == proposed.new_sha256


def test_a_restart_takes_an_unguarded_change_and_records_it(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki, packs={"shop.toml": shop("10.00")})
    with serve(config):
        pass
    (tmp_path / "policy" / "shop.toml").write_text(shop("50.00"), "utf-8")
    with serve(config) as srv, served_api(srv, pki) as api:
        session = open_session(api.planner, "agent-1", "100.00")
        assert pays(api, session, "30.00") is None
    first, second = [r for r in audit_records(tmp_path) if r["action"] == "policy.load"]
    assert second["old_sha256"] == first["sha256"] != second["sha256"]
    assert second["held"] is False and second["widens"] is True
    assert [c["field"] for c in second["widening"]] == ["assets.USD.max_per_payment"]


def vip(most: str, *, guarded: bool) -> str:
    """A pack for the config group ``vip``: at most ``most`` USD per payment."""
    text = shop(most, guarded=guarded).replace('id = "shop"', 'id = "vip"')
    return text.replace('agents = ["agent-1"]', 'groups = ["vip"]')


VIP_GROUP = '\n[groups]\nvip = ["agent-2"]\n'


@pytest.mark.parametrize("guarded", [True, False])
def test_a_restart_whose_recorded_set_no_longer_builds_fails_closed_if_it_was_guarded(
    tmp_path: Path, token: TestToken, pki: Pki, guarded: bool
) -> None:
    packs = {"shop.toml": shop("10.00", guarded=guarded), "vip.toml": vip("1.00", guarded=False)}
    config = write_config(tmp_path, token, pki, packs=packs, extra=VIP_GROUP)
    with serve(config):
        pass
    # Recorded as before the context was (a store migrated from before migration 13): its groups
    # are not known, so the set can only be rebuilt with today's config.
    with closing(sqlite3.connect(tmp_path / "state.db")) as db, db:
        db.execute("UPDATE policy_in_force SET context = NULL")
    # The config drops the group, the pack naming it goes, and shop widens 10 000 times.
    (tmp_path / "policy" / "vip.toml").unlink()
    (tmp_path / "policy" / "shop.toml").write_text(shop("100000.00", guarded=guarded), "utf-8")
    config = write_config(
        tmp_path, token, pki, packs={"shop.toml": shop("100000.00", guarded=guarded)}
    )
    if guarded:
        proc = paywarden("serve", "--config", config, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "the pack set in force before" in proc.stderr
        assert "no longer builds with this config" in proc.stderr
        assert "group 'vip' is not defined in the config" in proc.stderr
        assert "shop.toml asks for a second operator" in proc.stderr
        assert "`paywarden ctl reload`" in proc.stderr
        loads = [r for r in audit_records(tmp_path) if r["action"] == "policy.load"]
        assert len(loads) == 1  # nothing was put in force
        return
    with serve(config) as srv, served_api(srv, pki) as api:
        session = open_session(api.planner, "agent-1", "1000.00")
        assert pays(api, session, "30.00") is None
    first, second = [r for r in audit_records(tmp_path) if r["action"] == "policy.load"]
    assert second["old_sha256"] == first["sha256"] != second["sha256"]
    assert second["old_set_judged"] is False
    assert "group 'vip' is not defined in the config" in second["old_set_error"]


def _record_in_force(stores: Stores, tmp_path: Path, packs: dict[str, str],
                     groups: dict[str, list[str]], timezone: str = "UTC") -> SqlStore:  # fmt: skip
    """A store whose set in force is ``packs`` read with ``groups`` and ``timezone``."""
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    parsed = [parse_pack(t.encode(), tmp_path / n) for n, t in packs.items()]
    built = PolicySet.build(build_pack_set(parsed, groups), ASSETS, timezone)
    files = [(n, t.decode()) for n, t in built.texts()]
    event = audit_events.event("policy.load", None, 1)
    store.put_policy_in_force(built.sha256, files, 1, event, context=built.context.as_json())
    return store


ASSETS = {"USD": Asset("USD", 2)}


def _starting(tmp_path: Path, store: SqlStore, packs: dict[str, str],
              groups: dict[str, list[str]], timezone: str = "UTC") -> StartingPacks:  # fmt: skip
    parsed = [parse_pack(t.encode(), tmp_path / n) for n, t in packs.items()]
    now = build_pack_set(parsed, groups)
    return starting_packs(store, now, ASSETS, tmp_path, groups, timezone)


def test_a_restart_reads_the_set_in_force_with_the_groups_it_was_built_with(
    tmp_path: Path, stores: Stores
) -> None:
    packs = {"vip.toml": vip("10000.00", guarded=True)}
    store = _record_in_force(stores, tmp_path, packs, {"vip": ["agent-9"]})
    # The same pack files; the config moves agent-2 into the group.
    moved = _starting(tmp_path, store, packs, {"vip": ["agent-9", "agent-2"]})
    assert moved.held and moved.diff is not None and moved.diff.needs_second_operator
    assert ("agent agent-2", "pack") in {(c.subject, c.field) for c in moved.diff.widening()}
    assert moved.packs.for_agent("agent-2") is None  # held: agent-2 gets no pack yet
    assert moved.packs.for_agent("agent-9") is not None
    # The same config again: nothing to judge. Another time zone changes the set's hash.
    same = _starting(tmp_path, store, packs, {"vip": ["agent-9"]})
    assert same.diff is None and not same.held
    hours = {"vip.toml": vip("10.00", guarded=True) + '\n[hours]\nstart = "08:00"\nend = "18:00"\n'}
    store = _record_in_force(stores, tmp_path / "tz", hours, {"vip": ["agent-9"]})
    with pytest.raises(StartRefused, match=r"agent agent-9: policy.timezone: hours read in "
                       r"Pacific/Kiritimati instead of UTC.*not starting"):  # fmt: skip
        _starting(tmp_path / "tz", store, hours, {"vip": ["agent-9"]}, "Pacific/Kiritimati")
    unguarded = {"vip.toml": hours["vip.toml"].replace(GUARD, "")}
    store = _record_in_force(stores, tmp_path / "tz2", unguarded, {"vip": ["agent-9"]})
    taken = _starting(tmp_path / "tz2", store, unguarded, {"vip": ["agent-9"]}, "Asia/Tokyo")
    assert not taken.held and taken.diff is not None
    assert [c.field for c in taken.diff.widening()] == ["policy.timezone"]


# -- the use case, on the in-process stack (time is an input) ---------------------------

FIRST = Principal(Role.OPERATOR, "operator-1")
SECOND = Principal(Role.OPERATOR, "operator-2")


def test_a_pending_reload_expires(make_stack: MakeStack) -> None:
    stack = make_stack(packs={"shop.toml": shop("10.00", guarded=True)})
    reloads = stack.service.reloads
    (Path(stack.config.policy.dir) / "shop.toml").write_text(shop("50.00"), "utf-8")
    pending = reloads.reload(FIRST)
    assert pending.state is ReloadState.PENDING
    assert pending.expires_at - stack.store.latest_audit_time() == PENDING_SECONDS
    stack.clock.advance(PENDING_SECONDS)
    with pytest.raises(PreconditionFailed) as caught:
        reloads.confirm(SECOND, pending.reload_id, pending.new.sha256)
    assert caught.value.reason is Reason.RELOAD_EXPIRED
    assert stack.store.policy_reload(pending.reload_id).state is ReloadState.EXPIRED
    assert stack.service.deps.policy.current().sha256 == pending.old.sha256
    with pytest.raises(PreconditionFailed) as again:
        reloads.confirm(SECOND, pending.reload_id, pending.new.sha256)
    assert again.value.reason is Reason.RELOAD_NOT_PENDING


def test_only_an_operator_reloads_and_ids_are_checked(make_stack: MakeStack) -> None:
    stack = make_stack(packs={"shop.toml": shop("10.00")})
    with pytest.raises(Forbidden):
        stack.service.reloads.reload(Principal(Role.AGENT, "agent-1"))
    with pytest.raises(Forbidden):
        stack.service.reloads.confirm(
            Principal(Role.APPROVER, "approver-1"), "rld_" + "0" * 32, "0" * 64
        )
    with pytest.raises(InvalidInput):
        stack.service.reloads.confirm(SECOND, "rld_../../etc", "0" * 64)


def test_a_reload_replaces_the_set_whole_and_an_earlier_holder_keeps_its_own(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(packs={"shop.toml": shop("10.00")})
    live = stack.service.deps.policy
    started = live.current()
    (Path(stack.config.policy.dir) / "shop.toml").write_text(shop("5.00", version=2), "utf-8")
    assert stack.service.reloads.reload(FIRST).state is ReloadState.APPLIED
    assert live.current() is not started
    pack = started.packs.for_agent("agent-1")
    assert pack is not None and pack.model.assets["USD"].max_per_payment == "10.00"
    now = live.current().packs.for_agent("agent-1")
    assert now is not None and now.model.assets["USD"].max_per_payment == "5.00"


def test_a_decision_keeps_the_set_it_started_with(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(packs={"shop.toml": shop("10.00")})
    service = stack.service
    live = service.deps.policy
    session = service.open_session(
        Principal(Role.PLANNER, "planner-1"), "agent-1", "task", [("USD", "100.00")], 600, []
    ).record.id
    (Path(stack.config.policy.dir) / "shop.toml").write_text(shop("5.00", version=2), "utf-8")
    narrower = PolicySet.build(
        load_pack_dir(stack.config.policy.dir, {}),
        stack.config.asset_table(),
        stack.config.policy.timezone,
    )
    taken = live.current

    def reload_right_after_the_snapshot() -> PolicySet:
        started = taken()
        live.replace(narrower)  # a reload that completes while this decision runs
        return started

    monkeypatch.setattr(live, "current", reload_right_after_the_snapshot)
    agent = Principal(Role.AGENT, "agent-1")
    now = int(stack.clock.now())
    first = service.sign(
        agent, intent_fields(session, payee="acme", amount="8.00", expires_at=now + 60)
    )
    assert first.jws  # decided on the set it started with (10.00 at most)
    monkeypatch.undo()
    assert live.current() is narrower
    with pytest.raises(Denied) as caught:
        service.sign(
            agent, intent_fields(session, payee="acme", amount="8.00", expires_at=now + 60)
        )
    assert caught.value.reason is Reason.AMOUNT_ABOVE_MAX
