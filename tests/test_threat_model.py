"""docs/threat-model.md names, for every threat, the tests that prove its
mechanism: every table row names at least one test, and every test it names
exists (a function of that name defined in that module)."""

from __future__ import annotations

import ast
import re

from tests.helpers import ROOT

DOC = ROOT / "docs" / "threat-model.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows() -> list[str]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not line.startswith("|---") and not line.startswith("| #"):
            if line.startswith("| what it would find"):
                continue
            rows.append(line)
    return rows


def _functions(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_row_names_a_test() -> None:
    rows = _rows()
    assert len(rows) >= 11 + 19  # the ten ways plus key custody, and issue 8's defects
    assert [r for r in rows if not TEST_REF.search(r)] == []


def test_every_named_test_exists() -> None:
    missing = []
    for row in _rows():
        for path, name in TEST_REF.findall(row):
            if not (ROOT / path).is_file() or name not in _functions(path):
                missing.append(f"{path}::{name}")
    assert missing == []
