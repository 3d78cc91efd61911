"""No bare string for a reason code or a state outside the vocabulary module.

Every module of ``signer/`` and ``policy/`` is parsed (never imported) and its string
constants are checked against :mod:`paywarden.policy.vocabulary`:

- a constant equal to a :class:`Reason` value is a reason code written out: name the member;
- a constant equal to a state value (an outcome, verdict, phase, session state, approval
  status, vote, reservation status, freeze scope or source, sign status, first-payment
  mode, key profile) is a state written out where it is used as one: compared with (``==``, ``!=``,
  ``in``, ``not in`` a tuple, list or set of constants), passed or defaulted as a
  parameter named like a state, assigned to a name or attribute named like a state, or
  written into a table of states (a dict whose values are states, or whose keys are all
  states of one enum: three or more, or every one of them); either branch of a
  conditional expression counts.

Docstrings and the text of log and exception messages are not states; f-string pieces
are text too. SQL text stays SQL (a state inside a longer SQL string is not a constant
equal to it). A state passed positionally is left to mypy: the parameters that carry
states are typed with their enum.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pytest
from paywarden.policy import vocabulary
from paywarden.policy.vocabulary import (
    ApprovalStatus,
    Direction,
    FirstPaymentMode,
    FreezeScope,
    FreezeSource,
    KeyProfile,
    KeyState,
    Outcome,
    Phase,
    Reason,
    ReloadState,
    ReservationStatus,
    SessionState,
    SignStatus,
    Verdict,
    Vote,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("signer", "policy")
VOCABULARY = (ROOT / "policy" / "vocabulary.py").resolve()

STATE_ENUMS: tuple[type[StrEnum], ...] = (
    Outcome,
    Verdict,
    Phase,
    SessionState,
    ApprovalStatus,
    Vote,
    ReservationStatus,
    FreezeScope,
    FreezeSource,
    SignStatus,
    FirstPaymentMode,
    Direction,
    ReloadState,
    KeyState,
    KeyProfile,
)
REASONS = frozenset(member.value for member in Reason)
STATES = frozenset(member.value for enum in STATE_ENUMS for member in enum)
# A name that says "this holds a state" (as a keyword, a parameter, a variable or an attribute).
STATE_NAMES = frozenset(
    {"status", "phase", "state", "scope", "source", "outcome", "verdict", "vote", "reason"}
    | {"profile"}  # a key profile
)


def _modules() -> list[Path]:
    found = [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.resolve() != VOCABULARY
    ]
    assert found, "no module found: the test is looking in the wrong place"
    return found


def _text(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of every docstring constant: text, not a code."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and _text(body[0].value) is not None:
                ids.add(id(body[0].value))
    return ids


def _fstring_pieces(tree: ast.Module) -> set[int]:
    return {
        id(piece)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for piece in node.values
    }


def _states(node: ast.expr | None) -> Iterator[tuple[int, str]]:
    """(line, value) of each state constant ``node`` may be: itself, or either branch
    of a conditional expression (``Vote.APPROVE if ok else Vote.DENY`` written out)."""
    if isinstance(node, ast.IfExp):
        yield from _states(node.body)
        yield from _states(node.orelse)
    else:
        value = _text(node)
        if node is not None and value is not None and value in STATES:
            yield node.lineno, value


def _operands(node: ast.expr) -> Iterator[ast.expr]:
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        yield from node.elts
    else:
        yield node


def _state_uses(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, value, where) for each state constant used as a state."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            if all(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                for side in (node.left, *node.comparators):
                    for operand in _operands(side):
                        for line, value in _states(operand):
                            yield line, value, "compared"
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in STATE_NAMES:
                    for line, value in _states(keyword.value):
                        yield line, value, f"passed as {keyword.arg}="
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            defaulted = positional[len(positional) - len(arguments.defaults) :]
            pairs = list(zip(defaulted, arguments.defaults, strict=True))
            pairs += [
                (arg, default)
                for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
                if default is not None
            ]
            for arg, default in pairs:
                if arg.arg in STATE_NAMES:
                    for line, value in _states(default):
                        yield line, value, f"default of {arg.arg}"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = (
                    target.id
                    if isinstance(target, ast.Name)
                    else target.attr
                    if isinstance(target, ast.Attribute)
                    else None
                )
                if name is not None and name.lstrip("_").lower() in STATE_NAMES:
                    for line, value in _states(node.value):
                        yield line, value, f"assigned to {name}"
        elif isinstance(node, ast.Dict):
            for dict_value in node.values:
                for line, value in _states(dict_value):
                    yield line, value, "a value of a table"
            # Keyed by states: every key a member of one enum, three or more or all of them
            # (a payload's {"session": ..., "key": ...} is not a table of freeze scopes).
            keys = {_text(key) for key in node.keys}
            for enum in STATE_ENUMS:
                values = {member.value for member in enum}
                if keys <= values and (len(keys) >= 3 or keys == values):
                    for key_node in node.keys:
                        assert key_node is not None
                        key = str(_text(key_node))
                        yield key_node.lineno, key, f"a key of a table of {enum.__name__}"


def _scan(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, value, what) for each reason code written out and each state used as one."""
    text = _docstrings(tree) | _fstring_pieces(tree)
    found = [
        (node.lineno, node.value, f"reason code: use Reason.{node.value}")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in REASONS
        and id(node) not in text
    ]
    found += [
        (line, value, f"state {how}: use the vocabulary's member")
        for line, value, how in _state_uses(tree)
    ]
    return found


def test_no_bare_reason_code_or_state_outside_the_vocabulary() -> None:
    findings = sorted(
        {
            f"{path.relative_to(ROOT)}:{line}: {value!r} {what}"
            for path in _modules()
            for line, value, what in _scan(ast.parse(path.read_text(encoding="utf-8")))
        }
    )
    assert not findings, "bare strings for reasons or states:\n" + "\n".join(findings)


# -- the checker itself catches what it should, and only that ---------------------------


@pytest.mark.parametrize(
    "source",
    [
        'raise SessionNotUsable("SESSION_CLOSED", "closed")',
        'REASONS = {"closed": "SESSION_CLOSED"}',
        'if row.status == "held":\n    pass',
        'if status in ("held", "spent"):\n    pass',
        'if "open" != session.state:\n    pass',
        'store.set_reservation(decision_id, status="released")',
        'def f(phase: str = "explore") -> None:\n    pass',
        'record.verdict = "deny"',
        'tx.add_vote(approval_id, caller.id, now, vote="approve" if ok else "deny")',
        'status: str = "held"',
        '_SCOPES = {"global": 0, "agent": 1, "key": 2}',
        'VOTES = {"approve": True, "deny": False}',
        'LABELS = {Verdict.ALLOW: "allow"}',
    ],
)
def test_the_checker_finds_a_bare_code_or_state(source: str) -> None:
    assert _scan(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        '"""Refused with SESSION_CLOSED once the session is closed."""',
        'log.info("session closed")',
        'raise ValueError(f"status {status!r} is not held")',
        "conn.execute(\"UPDATE reservations SET status = 'held' WHERE id = ?\", (x,))",
        'payload = {"session": session_id, "key": key_id}',
        'if row["status"] == ReservationStatus.HELD:\n    pass',
        'name = "open"',
    ],
)
def test_the_checker_leaves_text_alone(source: str) -> None:
    assert not _scan(ast.parse(source))


def test_the_state_enums_are_all_checked() -> None:
    enums = {
        value
        for value in vars(vocabulary).values()
        if isinstance(value, type)
        and issubclass(value, StrEnum)
        and value.__module__ == vocabulary.__name__
        and value is not Reason
    }
    assert enums == set(STATE_ENUMS)
