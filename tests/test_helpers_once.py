"""Each test helper is defined once: a helper two modules need lives in ``tests/support/``
(or ``tests/attacks/kit.py``), and a module's own helper has a name no other module uses.

Helpers are the module-level functions and classes of ``tests/`` other than the tests
themselves (``test_*`` functions, ``Test*`` classes); fixtures count as helpers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def helper_names(source: str) -> list[str]:
    """The module-level helpers that ``source`` defines."""
    return [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith(("test_", "Test"))
    ]


def defined_twice(sources: dict[str, str]) -> dict[str, list[str]]:
    """Helper name -> the modules defining it, for names defined in more than one."""
    where: defaultdict[str, list[str]] = defaultdict(list)
    for module, source in sorted(sources.items()):
        for name in helper_names(source):
            where[name].append(module)
    return {name: modules for name, modules in where.items() if len(modules) > 1}


def test_the_check_finds_a_helper_defined_in_two_modules() -> None:
    sources = {
        "a.py": "def open_session():\n    pass\n\ndef test_a():\n    pass\n",
        "b.py": "async def open_session():\n    pass\n\nclass TestB:\n    pass\n",
        "c.py": "class Api:\n    pass\n",
    }
    assert defined_twice(sources) == {"open_session": ["a.py", "b.py"]}


def test_no_test_helper_is_defined_in_two_test_modules() -> None:
    sources = {
        str(path.relative_to(TESTS)): path.read_text(encoding="utf-8")
        for path in TESTS.rglob("*.py")
    }
    twice = defined_twice(sources)
    assert not twice, f"move these to tests/support/ or rename them: {twice}"
