"""Headless Chromium (Debian's ``chromium``, which ``scripts/install.sh`` installs) for
tests that render a page: the DOM after parsing, and a screenshot. Each run gets a new
empty profile and the flags that keep it off the network (no background requests, no
component updates, no sync), as root needs ``--no-sandbox``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    found = shutil.which("chromium")
    assert found is not None, "chromium is missing: ./scripts/install.sh installs it"
    return found


def _run(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,  # a safety net only
            check=False,
        )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def dump_dom(page: Path) -> str:
    """The page's DOM as Chromium built it, serialised (``--dump-dom``)."""
    return _run("--dump-dom", page.resolve().as_uri())


def screenshot(page: Path, out: Path, *, width: int, height: int) -> Path:
    """A PNG of the page's first ``width`` x ``height`` pixels."""
    _run(f"--screenshot={out}", f"--window-size={width},{height}", page.resolve().as_uri())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "chromium wrote no PNG"
    return out


class Element:
    """An element of a parsed page: its tag, attributes and all the text inside it."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.text = ""


class _Collector(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "area", "base", "col"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.open[-1] if self.open else None)
        self.elements.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID and self.open and self.open[-1].tag == tag:
            self.open.pop()

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text += data


def elements(html: str) -> list[Element]:
    """Every element of ``html``, in document order (a parser independent of ours)."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.elements


def within_element(element: Element, tag: str, attrs: dict[str, str]) -> bool:
    """``element`` lies within a ``tag`` element that has these attribute values."""
    node = element.parent
    while node is not None:
        if node.tag == tag and all(node.attrs.get(k) == v for k, v in attrs.items()):
            return True
        node = node.parent
    return False
