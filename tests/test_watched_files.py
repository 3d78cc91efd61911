"""``WatchedFiles``: the one mechanism behind the TLS files and the CRL file that follow
their files: read again when ``stat`` says they changed, the last good reading kept, one
warning for a change that cannot be used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from paywarden.signer.api.watched import WatchedFiles

LOG = logging.getLogger("tests.watched")


def _number(path: Path) -> int:
    text = path.read_text(encoding="ascii")
    if not text.strip().isdigit():
        raise ValueError(f"{path.name} holds no number")
    return int(text)


def _rewrite(path: Path, text: str) -> None:
    aside = path.with_name(path.name + ".new")
    aside.write_text(text, encoding="ascii")
    aside.replace(path)  # a new inode: seen whatever the clock's resolution


def test_a_change_is_read_and_a_bad_one_keeps_the_last_good_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "n"
    path.write_text("1", encoding="ascii")
    reads: list[int] = []
    changes: list[tuple[int, int]] = []

    def read(_in_use: int | None) -> int:
        reads.append(1)
        return _number(path)

    watch = WatchedFiles(
        (path,),
        read,
        errors=(ValueError, OSError),
        log=LOG,
        refused="n changed but the number in use stays",
        changed=lambda old, new: changes.append((old, new)),
    )
    assert [watch.current() for _ in range(3)] == [1, 1, 1]
    assert len(reads) == 1  # unchanged files are not read again
    _rewrite(path, "2")
    assert watch.current() == 2
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _rewrite(path, "two")
        assert [watch.current() for _ in range(3)] == [2, 2, 2]
        path.unlink()
        assert watch.current() == 2
    assert [r.getMessage() for r in caplog.records] == [
        "n changed but the number in use stays: n holds no number",
        f"n changed but the number in use stays: [Errno 2] No such file or directory: '{path}'",
    ]
    assert len(reads) == 4  # the bad reading was tried once, not at every call
    _rewrite(path, "3")
    assert watch.current() == 3
    assert changes == [(1, 2), (2, 3)]


def test_the_first_reading_raises(tmp_path: Path) -> None:
    path = tmp_path / "n"
    path.write_text("x", encoding="ascii")
    with pytest.raises(ValueError, match="holds no number"):
        WatchedFiles(
            (path,), lambda _: _number(path), errors=(ValueError,), log=LOG, refused="unused"
        )
