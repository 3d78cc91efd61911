"""Every command line the guides quote names a real command, subcommand and flag.

Each `paywarden …`, `paywarden-keys …`, `paywarden-pki …` and `scripts/…` line in the ```sh
blocks and inline code of the guides is walked against the argparse parser the command
builds (taken in-process, before it parses anything): every subcommand must be one the
parser offers, every ``--flag`` one it has at that level. A shell script must exist, be
executable and mention each flag given to it. A ``PAYWARDEN_SECTION__KEY=`` variable set in
front of a command must name a setting of the configuration. Other programs (git, openssl,
sqlite3, pg_dump…) are not checked.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from functools import cache
from unittest import mock

import pytest
from paywarden.signer.cli import commands, keys, pki
from paywarden.signer.config import Config
from pydantic import BaseModel

from tests.helpers import ROOT

GUIDES = (
    "docs/index.md",
    "docs/quickstart.md",
    "docs/operations.md",
    "docs/policy-packs.md",
    "docs/x402.md",
)
_SEPARATORS = {"&&", "||", ";", "|", "&"}
_REDIRECTS = {"<", ">", ">>", "<<", "2>", "2>&1"}
_INSTALLED: dict[str, Callable[[list[str]], int]] = {
    "paywarden": lambda argv: commands.main(argv),
    "paywarden-keys": lambda argv: keys.main(argv, prog="paywarden-keys"),
    "paywarden-pki": lambda argv: pki.main(argv, prog="paywarden-pki"),
}
# The scripts that are thin wrappers over an installed command.
_WRAPPERS = {"keys.py": "paywarden-keys", "pki.py": "paywarden-pki"}


class _ParserBuilt(Exception):
    """Carries the parser a command built, instead of letting it parse."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture_parser(self: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
    raise _ParserBuilt(self)


@cache
def _parser_of(program: str) -> argparse.ArgumentParser:
    """The argparse parser ``program`` builds: the installed commands are run in-process up to
    their parse_args; a script of scripts/ is run as __main__ (its import and definitions
    only: the parser is taken before it does anything)."""
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _capture_parser):
        try:
            if program in _INSTALLED:
                _INSTALLED[program]([])
            else:
                with mock.patch.object(sys, "argv", [program]):
                    runpy.run_path(str(ROOT / "scripts" / program), run_name="__main__")
        except _ParserBuilt as parsed:
            return parsed.parser
    raise AssertionError(f"{program} built no argument parser")


def _subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk_command(program: str, args: list[str]) -> list[str]:
    """What is wrong with ``program args`` (nothing: [])."""
    parser = _parser_of(program)
    path: list[str] = []
    problems = []
    i = 0
    while i < len(args):
        token = args[i]
        where = " ".join([program, *path])
        subcommands = _subcommand_parsers(parser)
        if "…" in token:
            break  # a placeholder for the rest of the line
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is None:
                problems.append(f"{where}: no option {flag}")
            elif action.nargs != 0 and "=" not in token:
                i += 1
        elif subcommands and not token.startswith("-"):
            if token not in subcommands:
                problems.append(f"{where}: no subcommand {token!r}")
                break
            path.append(token)
            parser = subcommands[token]
        i += 1
    return problems


def _names_a_setting(variable: str) -> bool:
    section, _, key = variable.removeprefix("PAYWARDEN_").lower().partition("__")
    field = Config.model_fields.get(section)
    model = field.annotation if field else None
    return isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields


def doc_line_problems(line: str) -> list[str]:
    """The problems of one shell line (several commands joined by && ; | are each checked)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unbalanced quote: a fragment, not a command
        return [f"cannot read {line!r}: {exc}"]
    problems: list[str] = []
    command: list[str] = []
    for token in [*tokens, ";"]:
        if token in _SEPARATORS:
            problems += _check_command(command)
            command = []
        else:
            command.append(token)
    return problems


def _check_command(words: list[str]) -> list[str]:
    problems = []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name = words.pop(0).split("=", 1)[0]
        if name.startswith("PAYWARDEN_") and not _names_a_setting(name):
            problems.append(f"{name} names no setting")
    for i, word in enumerate(words):  # redirections end the arguments
        if word in _REDIRECTS or re.fullmatch(r"\d*[<>]+&?\d*", word):
            words = words[:i]
            break
    if not words:
        return problems
    program, args = words[0], words[1:]
    if "…" in program:
        return problems  # "scripts/…": a placeholder, not a command
    if re.search(r"(^|/)python3?$", program) and args and "scripts/" in args[0]:
        program, args = args[0], args[1:]
    name = program.rsplit("/", 1)[-1]
    if name in _INSTALLED and (program == name or "/bin/" in program):
        return problems + _walk_command(name, args)
    if not re.match(r"^(\./)?scripts/", program):
        return problems  # another program: not ours to check
    script = ROOT / "scripts" / name
    if not script.is_file():
        return [*problems, f"no script scripts/{name}"]
    if name.endswith(".sh"):
        if not os.access(script, os.X_OK):
            problems.append(f"scripts/{name} is not executable")
        text = script.read_text(encoding="utf-8")
        flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
        return problems + [f"scripts/{name} knows no {f}" for f in flags if f not in text]
    if name in _WRAPPERS:
        wrapped = _WRAPPERS[name]
        module = wrapped.removeprefix("paywarden-")
        assert f"from paywarden.signer.cli.{module} import main" in script.read_text("utf-8")
        return problems + [
            p.replace(wrapped, f"scripts/{name}", 1) for p in _walk_command(wrapped, args)
        ]
    return problems + _walk_command(name, args)


def _quoted_lines(path: str) -> Iterator[str]:
    """The shell lines of ```sh blocks (continuations joined), and inline code that starts
    with one of our commands."""
    text = (ROOT / path).read_text(encoding="utf-8")
    fences = r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```$"
    for lang, block in re.findall(fences, text, re.MULTILINE | re.DOTALL):
        if lang == "sh":
            yield from (ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip())
    outside = re.sub(fences, "", text, flags=re.MULTILINE | re.DOTALL)
    ours = (
        r"^(PAYWARDEN_\w+=\S* )*((\S*/)?(paywarden|paywarden-keys|paywarden-pki) |(\./)?scripts/\S)"
    )
    for span in re.findall(r"`([^`\n]+)`", outside):
        if re.match(ours, span):
            yield span


def test_the_checker_finds_what_is_wrong() -> None:
    assert doc_line_problems(".venv/bin/paywarden ctl freeze agent a --reason x") == []
    assert doc_line_problems("paywarden ctl frezee agent a --reason x") == [
        "paywarden ctl: no subcommand 'frezee'"
    ]
    assert doc_line_problems("paywarden ctl freeze agent a --reasn x") == [
        "paywarden ctl freeze: no option --reasn"
    ]
    # Options before the subcommand belong to their own level, values are skipped.
    assert doc_line_problems("paywarden ctl --addr 127.0.0.1:1 --cert c.crt freezes") == []
    assert doc_line_problems("paywarden ctl freezes --addr 127.0.0.1:1") == [
        "paywarden ctl freezes: no option --addr"
    ]
    assert doc_line_problems("scripts/keys.py --label t rotate --config c --label payments") == []
    assert doc_line_problems("scripts/keys.py rotate --key payments") == [
        "scripts/keys.py rotate: no option --key"
    ]
    assert doc_line_problems("./scripts/nope.sh") == ["no script scripts/nope.sh"]
    assert doc_line_problems("./scripts/install.sh --serve && ./scripts/install.sh --fast") == [
        "scripts/install.sh knows no --fast"
    ]
    assert doc_line_problems("PAYWARDEN_SERVR__LISTEN=x paywarden serve 3< pin") == [
        "PAYWARDEN_SERVR__LISTEN names no setting"
    ]
    assert doc_line_problems("sqlite3 db '.backup x' | paywarden audit verfy") == [
        "paywarden audit: no subcommand 'verfy'"
    ]


@pytest.mark.parametrize("guide", GUIDES)
def test_every_command_a_guide_quotes_exists_with_its_flags(guide: str) -> None:
    lines = list(_quoted_lines(guide))
    assert lines, f"{guide} quotes no command"
    problems = [f"{line!r}: {p}" for line in lines for p in doc_line_problems(line)]
    assert problems == []
