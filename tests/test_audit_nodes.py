"""Audit proofs from stored subtrees (issue 10): O(log n) nodes, the same bytes as RFC 9162.

The list-based functions in ``merkle`` (checked against the RFC vectors in test_vectors.py)
are the reference: for random sizes, the proofs and tree heads folded from perfect
subtrees equal theirs.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.signer.auditlog import merkle, subtrees
from paywarden.signer.auditlog.append import AuditState, append, grow

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
