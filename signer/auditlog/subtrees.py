"""RFC 9162 tree heads and proofs from the log's stored perfect subtrees, in O(log n).

Every hash that MTH, PATH and PROOF (RFC 9162 section 2.1) need is the root of a
range of leaves that the recursion reaches, and every such range is a run of
*perfect* subtrees: node ``(level, index)`` is the root over leaves
``[index * 2**level, (index + 1) * 2**level)`` (level 0 is a leaf hash). The store
keeps each perfect subtree once it is complete, so a proof reads O(log n) stored
nodes, never the leaves. This module is the pure half: which nodes a proof needs
(:func:`root_nodes`, :func:`inclusion_nodes`, :func:`consistency_nodes`) and the
hashes made of them (:func:`root`, :func:`inclusion_proof`,
:func:`consistency_proof`). The list-based functions in :mod:`.merkle` are the
reference these are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from paywarden.signer.auditlog.merkle import EMPTY_ROOT, node_hash

Node = tuple[int, int]  # (level, index): the perfect subtree over 2**level leaves
Run = tuple[Node, ...]  # perfect subtrees, left to right, whose MTH is one hash
Subtree = Callable[[int, int], bytes]  # (level, index) -> the stored root of that subtree


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def cover(lo: int, hi: int) -> Run:
    """The perfect subtrees that make up leaves ``[lo, hi)``, largest first.

    Every range the RFC 9162 recursion reaches starts at a multiple of the largest
    power of two it holds, so it is its biggest perfect subtree followed by a
    smaller range of the same kind (the binary digits of ``hi - lo``)."""
    if not 0 <= lo < hi:
        raise ValueError(f"no leaves in [{lo}, {hi})")
    out = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo % (1 << level):
            raise ValueError(f"[{lo}, {hi}) is not a range of the tree")
        out.append((level, lo >> level))
        lo += 1 << level
    return tuple(out)


def root_nodes(size: int) -> Run:
    """The nodes whose fold is MTH of the first ``size`` leaves (the tree's frontier)."""
    if size < 0:
        raise ValueError(f"no tree of {size} leaves")
    return cover(0, size) if size else ()


def inclusion_nodes(index: int, size: int) -> list[Run]:
    """PATH(index, D[size]) as runs of nodes, one run per proof hash."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    out = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append(cover(lo + k, hi))
            hi = lo + k
        else:
            out.append(cover(lo, lo + k))
            lo += k
    out.reverse()  # the recursion lists the deepest sibling first
    return out


def consistency_nodes(first: int, size: int) -> list[Run]:
    """PROOF(first, D[size]) as runs of nodes, one run per proof hash."""
    if not 0 < first <= size:
        raise ValueError(f"no consistency proof from {first} to {size}")
    out = []
    lo, hi, complete = 0, size, True
    while first - lo != hi - lo:
        k = _split(hi - lo)
        if first - lo <= k:
            out.append(cover(lo + k, hi))
            hi = lo + k
        else:
            out.append(cover(lo, lo + k))
            lo += k
            complete = False
    if not complete:
        out.append(cover(lo, hi))
    out.reverse()
    return out


def needed(runs: Iterable[Run]) -> set[Node]:
    """Every node that these runs read: what to fetch from the store, once."""
    return {node for run in runs for node in run}


def fold(run: Run, subtree: Subtree) -> bytes:
    """MTH of the leaves a run covers: its nodes joined right to left."""
    if not run:
        return EMPTY_ROOT
    acc = subtree(*run[-1])
    for node in reversed(run[:-1]):
        acc = node_hash(subtree(*node), acc)
    return acc


def folds(runs: Sequence[Run], subtree: Subtree) -> list[bytes]:
    return [fold(run, subtree) for run in runs]


def root(size: int, subtree: Subtree) -> bytes:
    """MTH(D[size])."""
    return fold(root_nodes(size), subtree)


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[size]) for leaf ``index`` (0-based)."""
    return folds(inclusion_nodes(index, size), subtree)


def consistency_proof(first: int, size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(first, D[size])."""
    return folds(consistency_nodes(first, size), subtree)
