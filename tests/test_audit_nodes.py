"""Audit proofs from stored subtrees (issue 10): O(log n) nodes, the same bytes as RFC 9162.

The list-based functions in ``merkle`` (checked against the RFC vectors in test_vectors.py)
are the reference: for random sizes, the proofs and tree heads folded from perfect
subtrees equal theirs. Then through a real SQLite store: the nodes that appends write,
and those a migration computes for a log written before they were kept, give the same
heads and proofs as the leaves, and a proof reads O(log n) of them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.signer.auditlog import merkle, subtrees
from paywarden.signer.auditlog.append import AuditState, append, grow
from paywarden.signer.core.checkpoints import Checkpoints
from paywarden.signer.core.deps import Deps
from paywarden.signer.store import schema
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sqlite import SqliteStore

from tests.support.vectors import load

MAX_LEAVES = 300
LEAVES = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_LEAVES)]


def _perfect(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every perfect subtree of these leaves, from the list-based reference."""
    out: dict[tuple[int, int], bytes] = {}
    level = 0
    while 1 << level <= len(leaves):
        width = 1 << level
        for index in range(len(leaves) // width):
            out[level, index] = merkle.root(leaves[index * width : (index + 1) * width])
        level += 1
    return out


def _lookup(nodes: dict[tuple[int, int], bytes]) -> subtrees.Subtree:
    return lambda level, index: nodes[level, index]


NODES = _perfect(LEAVES)
SUBTREE = _lookup(NODES)


def _reads(runs: list[subtrees.Run]) -> int:
    return len(subtrees.needed(runs))


def _log_bound(n: int) -> int:
    """What O(log n) means here: at most two nodes per level of the tree."""
    return 2 * n.bit_length() + 1


# -- the pure algorithm against the list-based reference -------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_subtree_proofs_equal_the_list_based_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX_LEAVES), label="n")
    m = data.draw(st.integers(0, n - 1), label="m")
    first = data.draw(st.integers(1, n), label="first")
    leaves = LEAVES[:n]
    assert subtrees.root(n, SUBTREE) == merkle.root(leaves)
    assert subtrees.inclusion_proof(m, n, SUBTREE) == merkle.inclusion_proof(m, leaves)
    assert subtrees.consistency_proof(first, n, SUBTREE) == merkle.consistency_proof(first, leaves)
    runs = [
        subtrees.root_nodes(n),
        *subtrees.inclusion_nodes(m, n),
        *subtrees.consistency_nodes(first, n),
    ]
    assert all(node in NODES for node in subtrees.needed(runs))
    assert _reads(subtrees.inclusion_nodes(m, n)) <= _log_bound(n)
    assert _reads(subtrees.consistency_nodes(first, n)) <= _log_bound(n)


def test_every_size_and_index_up_to_70() -> None:
    for n in range(1, 71):
        leaves = LEAVES[:n]
        assert subtrees.root(n, SUBTREE) == merkle.root(leaves)
        for m in range(n):
            assert subtrees.inclusion_proof(m, n, SUBTREE) == merkle.inclusion_proof(m, leaves)
        for first in range(1, n + 1):
            expected = merkle.consistency_proof(first, leaves)
            assert subtrees.consistency_proof(first, n, SUBTREE) == expected


def test_the_rfc9162_vectors_from_subtrees() -> None:
    vectors = load("rfc9162")
    leaves = [merkle.leaf_hash(bytes.fromhex(h)) for h in vectors["leaves_hex"]]
    subtree = _lookup(_perfect(leaves))
    for r in vectors["roots"]:
        assert subtrees.root(r["size"], subtree).hex() == r["root"]
    for v in vectors["inclusion"]:
        proof = subtrees.inclusion_proof(v["index"], v["size"], subtree)
        assert [h.hex() for h in proof] == v["path"], v
    for v in vectors["consistency"]:
        proof = subtrees.consistency_proof(v["first"], v["second"], subtree)
        assert [h.hex() for h in proof] == v["proof"], v


def test_a_million_leaf_tree_needs_a_few_dozen_nodes() -> None:
    n = 1_000_003
    assert _reads(subtrees.inclusion_nodes(n // 3, n)) <= _log_bound(n)
    assert _reads(subtrees.consistency_nodes(n // 2 + 1, n)) <= _log_bound(n)
    assert len(subtrees.root_nodes(n)) == bin(n).count("1")


@pytest.mark.parametrize(("args", "message"), [((0, 0), "not in a tree"), ((5, 5), "not in")])
def test_an_index_outside_the_tree_is_refused(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subtrees.inclusion_nodes(*args)


def test_an_impossible_consistency_proof_is_refused() -> None:
    for first, size in ((0, 4), (5, 4)):
        with pytest.raises(ValueError, match="no consistency proof"):
            subtrees.consistency_nodes(first, size)


def test_a_range_the_tree_never_splits_at_is_refused() -> None:
    with pytest.raises(ValueError, match="not a range of the tree"):
        subtrees.cover(1, 3)


def test_each_append_yields_the_subtrees_its_leaf_completes() -> None:
    state = AuditState()
    kept: dict[tuple[int, int], bytes] = {}
    leaves: list[bytes] = []
    for i in range(70):
        grown = grow(state, {"action": "test", "time": i})
        assert grown.appended == append(state, {"action": "test", "time": i})
        state = grown.appended.state
        leaves.append(grown.appended.leaf)
        kept.update({(level, index): h for level, index, h in grown.nodes})
    expected = {node: h for node, h in _perfect(leaves).items() if node[0] >= 1}
    assert kept == expected
    assert len(kept) == 70 - 3  # n minus the number of frontier entries (70 = 64 + 4 + 2)


# -- through a real store ---------------------------------------------------------------------


class CountingStore(SqliteStore):
    """A real store that counts the subtree nodes the proofs read."""

    reads: list[int]

    def audit_subtrees(self, nodes: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self.reads.append(len(nodes))
        return super().audit_subtrees(nodes)


@pytest.fixture
def counted_store(tmp_path: Path) -> Iterator[CountingStore]:
    s = CountingStore(tmp_path / "state.db")
    s.reads = []
    s.migrate()
    yield s
    s.close()


def _stored(path: Path) -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    conn = sqlite3.connect(path)
    try:
        leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf FROM audit_log ORDER BY seq")]
        nodes = {
            (int(level), int(idx)): bytes(h)
            for level, idx, h in conn.execute("SELECT level, idx, hash FROM audit_nodes")
        }
    finally:
        conn.close()
    return leaves, nodes


def _checkpoints(store: SqliteStore) -> Checkpoints:
    # Proofs read only the store: no HSM is needed for them.
    return Checkpoints(cast(Deps, SimpleNamespace(store=store, hsm=None)))


def _assert_proofs_match_the_leaves(store: CountingStore, sizes: range) -> None:
    leaves, _ = _stored(store.path)
    proofs = _checkpoints(store)
    head, root = store.audit_head()
    assert head == len(leaves) and root == merkle.root(leaves)
    for size in sizes:
        for seq in range(1, size + 1):
            got = proofs.inclusion_proof(seq, size)
            assert got.leaf == leaves[seq - 1]
            assert got.root == merkle.root(leaves[:size])
            assert got.proof == merkle.inclusion_proof(seq - 1, leaves[:size])
            assert got.record == store.audit_record(seq)
        for first in range(1, size + 1):
            old, new, proof = proofs.consistency_proof(first, size)
            assert old == merkle.root(leaves[:first])
            assert new == merkle.root(leaves[:size])
            assert proof == merkle.consistency_proof(first, leaves[:size])


def test_appends_store_every_complete_subtree_in_the_same_transaction(
    counted_store: CountingStore,
) -> None:
    store = counted_store
    for i in range(20):
        store.audit_event({"action": "test", "time": i})
    with store.payment_tx() as tx:  # several appends in one transaction
        for i in range(20, 45):
            tx.audit({"action": "test", "time": i})
    leaves, nodes = _stored(store.path)
    assert len(leaves) == 45
    assert nodes == {node: h for node, h in _perfect(leaves).items() if node[0] >= 1}
    _assert_proofs_match_the_leaves(store, range(1, 46))


def test_a_rolled_back_append_leaves_no_node(counted_store: CountingStore) -> None:
    store = counted_store
    store.audit_event({"action": "test", "time": 1})

    class Abort(Exception):
        pass

    with pytest.raises(Abort), store.payment_tx() as tx:
        tx.audit({"action": "test", "time": 2})  # would complete node (1, 0)
        raise Abort
    assert _stored(store.path)[1] == {}
    store.audit_event({"action": "test", "time": 3})
    leaves, nodes = _stored(store.path)
    assert nodes == {(1, 0): merkle.node_hash(leaves[0], leaves[1])}


def test_a_proof_reads_log_n_stored_nodes_not_the_leaves(counted_store: CountingStore) -> None:
    store = counted_store
    n = 1000
    with store.payment_tx() as tx:
        for i in range(n):
            tx.audit({"action": "test", "time": i})
    proofs = _checkpoints(store)
    leaves, _ = _stored(store.path)
    store.reads.clear()
    got = proofs.inclusion_proof(377, 0)
    assert got.proof == merkle.inclusion_proof(376, leaves)
    old, new, proof = proofs.consistency_proof(513, 999)
    assert (old, new) == (merkle.root(leaves[:513]), merkle.root(leaves[:999]))
    assert proof == merkle.consistency_proof(513, leaves[:999])
    assert len(store.reads) == 2
    assert all(r <= _log_bound(n) + bin(n).count("1") + 1 for r in store.reads), store.reads


def test_a_missing_node_is_a_store_error(counted_store: CountingStore) -> None:
    store = counted_store
    with pytest.raises(StoreError, match=r"no stored node \(3, 0\)"):
        store.audit_subtrees([(3, 0)])


# -- the migration that indexes a log written before nodes were kept ---------------------------


def _store_at_version_6(path: Path, records: int) -> None:
    """A store as version 6 made it: the migrations up to 6, records appended the way
    it appended them (the record, its leaf and the frontier; no nodes)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(1, 7):
        for statement in schema.statements(schema.MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 6")
    state = AuditState()
    for i in range(records):
        record, leaf, state = append(state, {"action": "test", "time": 1000 + i, "i": i})
        conn.execute(
            "INSERT INTO audit_log (seq, body, leaf) VALUES (?, ?, ?)", (state.size, record, leaf)
        )
    frontier = json.dumps([[s, h.hex()] for s, h in state.frontier])
    conn.execute("UPDATE audit_state SET size = ?, frontier = ? WHERE id = 1", (records, frontier))
    conn.execute("COMMIT")
    conn.close()


def test_migrating_a_version_6_log_stores_its_subtrees(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    _store_at_version_6(path, 77)
    assert "audit_nodes" not in {
        r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")
    }
    store = CountingStore(path)
    store.reads = []
    try:
        assert store.migrate() == schema.SCHEMA_VERSION == 15
        leaves, nodes = _stored(path)
        assert len(leaves) == 77
        assert nodes == {node: h for node, h in _perfect(leaves).items() if node[0] >= 1}
        _assert_proofs_match_the_leaves(store, range(1, 78, 4))
        for i in range(77, 100):  # and appends go on from there
            store.audit_event({"action": "test", "time": 1000 + i, "i": i})
        leaves, nodes = _stored(path)
        assert nodes == {node: h for node, h in _perfect(leaves).items() if node[0] >= 1}
        _assert_proofs_match_the_leaves(store, range(95, 101))
    finally:
        store.close()


def test_migrating_a_log_whose_leaves_were_changed_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    _store_at_version_6(path, 10)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET leaf = ? WHERE seq = 4", (bytes(32),))
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        with pytest.raises(StoreError, match="do not fold to the tree head"):
            store.migrate()
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 6  # nothing half-done
    conn.close()
