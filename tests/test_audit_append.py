"""The audit append as a pure function: what every store backend persists."""

from __future__ import annotations

import json

import pytest
from paywarden.signer.auditlog import merkle
from paywarden.signer.auditlog.append import AuditState, append


def _grow(events: list[dict[str, object]]) -> tuple[list[str], list[bytes], AuditState]:
    state = AuditState()
    records: list[str] = []
    leaves: list[bytes] = []
    for event in events:
        record, leaf, state = append(state, event)
        records.append(record)
        leaves.append(leaf)
    return records, leaves, state


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_state_root_is_the_merkle_root_over_the_leaves(n: int) -> None:
    records, leaves, state = _grow([{"action": "test", "time": i, "i": i} for i in range(n)])
    assert state.size == n
    assert state.root == merkle.root(leaves)
    assert leaves == [merkle.leaf_hash(r.encode("utf-8")) for r in records]


def test_each_record_carries_its_seq_and_the_root_before_it() -> None:
    records, leaves, _state = _grow([{"action": "test", "time": 5, "i": i} for i in range(6)])
    for i, record in enumerate(records):
        body = json.loads(record)
        assert body["seq"] == i + 1
        assert body["prev_root"] == merkle.root(leaves[:i]).hex()
    assert json.loads(records[0])["prev_root"] == merkle.EMPTY_ROOT.hex()


def test_record_is_rfc8785_text() -> None:
    record, _leaf, _state = append(AuditState(), {"time": 1, "b": "é", "a": [1, 2]})
    empty = merkle.EMPTY_ROOT.hex()
    assert record == f'{{"a":[1,2],"b":"é","prev_root":"{empty}","seq":1,"time":1}}'


def test_times_never_go_back() -> None:
    _r, _l, state = append(AuditState(), {"action": "late", "time": 100})
    assert state.head_time == 100
    record, _leaf, state = append(state, {"action": "early", "time": 90})
    assert json.loads(record)["time"] == 100
    assert state.head_time == 100
    record, _leaf, state = append(state, {"action": "later", "time": 120})
    assert json.loads(record)["time"] == 120


def test_an_empty_log_keeps_the_time_given() -> None:
    record, _leaf, _state = append(AuditState(head_time=500), {"time": 1})
    assert json.loads(record)["time"] == 1


def test_the_input_state_is_not_changed() -> None:
    first = AuditState()
    _r, _l, second = append(first, {"time": 1})
    _r, _l, third = append(second, {"time": 2})
    assert first == AuditState()
    assert second.size == 1 and third.size == 2
    assert second.root != third.root
