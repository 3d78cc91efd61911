"""The audit log's Merkle tree, as RFC 9162 section 2.1 defines it.

Leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left ||
right)``, the empty tree ``SHA-256()``; a tree of n leaves splits at the
largest power of two smaller than n. The tree can grow one leaf at a time
from its *frontier* (the roots of its perfect subtrees, left to right), which
the store keeps beside the log so that an append never reads the whole log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (already hashed with :func:`leaf_hash`)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


# -- incremental growth -------------------------------------------------------------

Frontier = list[tuple[int, bytes]]  # (subtree size, subtree root), sizes strictly decreasing


def frontier_root(frontier: Frontier) -> bytes:
    if not frontier:
        return EMPTY_ROOT
    acc = frontier[-1][1]
    for _, h in reversed(frontier[:-1]):
        acc = node_hash(h, acc)
    return acc


def frontier_append(frontier: Frontier, leaf: bytes) -> Frontier:
    return frontier_push(frontier, leaf)[0]


def frontier_push(frontier: Frontier, leaf: bytes) -> tuple[Frontier, list[bytes]]:
    """The frontier with ``leaf`` appended, and the roots of the perfect subtrees
    that the leaf completed, smallest first (sizes 2, 4, 8, ...: levels 1, 2, 3, ...)."""
    out = [*frontier, (1, leaf)]
    completed = []
    while len(out) >= 2 and out[-1][0] == out[-2][0]:
        (size, left), (_, right) = out[-2], out[-1]
        merged = node_hash(left, right)
        completed.append(merged)
        out[-2:] = [(size * 2, merged)]
    return out, completed


# -- proofs --------------------------------------------------------------------------


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) for leaf ``index`` (0-based) in the tree of ``leaves``."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root(leaves[:k])]


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): the tree of the first ``m`` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from {m} to {n}")
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


# -- the tree as a verifier grows it ------------------------------------------------


class Tree:
    """The Merkle tree of the records so far, grown one leaf at a time from its frontier
    (the roots of its perfect subtrees; their sizes are the binary digits of its size).
    The same tree as :func:`frontier_append` and :func:`frontier_root`, in a verifier's
    inner loop: one hash per merge, no tuples."""

    __slots__ = ("frontier", "size")

    def __init__(self) -> None:
        self.frontier: list[bytes] = []
        self.size = 0

    def push(self, leaf: bytes) -> None:
        frontier, node, size = self.frontier, leaf, self.size
        while size & 1:
            node = _sha256(b"\x01" + frontier.pop() + node).digest()
            size >>= 1
        frontier.append(node)
        self.size += 1

    def root_hex(self) -> str:
        frontier = self.frontier
        if not frontier:
            return _EMPTY_HEX
        acc = frontier[-1]
        for i in range(len(frontier) - 2, -1, -1):
            acc = _sha256(b"\x01" + frontier[i] + acc).digest()
        return acc.hex()


_EMPTY_HEX = EMPTY_ROOT.hex()
_sha256 = hashlib.sha256
