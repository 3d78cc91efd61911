"""What the guided demo prints for people: the story, step by step, in a terminal.

Colour (ANSI) only when the stream is a terminal, and never when ``NO_COLOR`` is set
(https://no-color.org) or ``TERM`` is ``dumb``. Text the stream's encoding cannot show
(the confusable payee's Cyrillic letter on a non-UTF-8 terminal) is escaped, not fatal.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TextIO

_RESET = "\033[0m"
_STYLES = {
    "bold": "\033[1m",
    "dim": "\033[2m",
    "red": "\033[31m",
    "green": "\033[32m",
    "yellow": "\033[33m",
    "cyan": "\033[36m",
}


def wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Printer:
    """The story's narrator; ``quiet`` prints nothing (``--json`` alone on stdout)."""

    def __init__(self, stream: TextIO, *, colour: bool, quiet: bool = False) -> None:
        self._stream = stream
        self._colour = colour
        self._quiet = quiet

    def _paint(self, text: str, *styles: str) -> str:
        if not self._colour or not styles:
            return text
        return "".join(_STYLES[s] for s in styles) + text + _RESET

    def _line(self, text: str = "") -> None:
        if self._quiet:
            return
        try:
            self._stream.write(text + "\n")
        except UnicodeEncodeError:
            enc = getattr(self._stream, "encoding", None) or "ascii"
            self._stream.write(text.encode(enc, "backslashreplace").decode(enc) + "\n")
        self._stream.flush()

    def banner(self, text: str) -> None:
        self._line(self._paint(text, "bold"))

    def step(self, key: str, title: str) -> None:
        self._line()
        self._line(self._paint(f"({key}) {title}", "bold", "cyan"))

    def say(self, who: str, text: str) -> None:
        """``who`` does or says ``text``."""
        self._line(f"  {self._paint(who, 'bold')}: {text}")

    def outcome(self, ok: bool, text: str) -> None:
        mark = self._paint("✓", "green") if ok else self._paint("✗", "red", "bold")
        self._line(f"  {mark} {self._paint(text, 'green' if ok else 'red')}")

    def warn(self, text: str) -> None:
        self._line(f"  {self._paint(text, 'yellow')}")

    def note(self, text: str) -> None:
        self._line(f"  {self._paint(text, 'dim')}")

    def block(self, lines: Iterable[str], indent: int = 4) -> None:
        pad = " " * indent
        for line in lines:
            self._line(self._paint(pad + line, "dim"))

    def figure(self, name: str, value: str, check: str) -> None:
        self._line(f"  {name:<28} {self._paint(value, 'bold')}  {self._paint(check, 'dim')}")
