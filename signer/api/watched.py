"""Files watched by ``stat``: read again when they change, the last good reading kept.

:class:`WatchedFiles` holds what ``read`` made of a set of files. :meth:`~WatchedFiles.current`
stats them (cheap enough to ask before every handshake or call) and, when one of them
changed since the reading in use (its inode, size or times, or it appeared or vanished),
reads them again. A reading that fails (``read`` raises one of ``errors``) is not used:
the last good one stays, one warning says why, and the same changed files are not read
again until they change once more. The first reading, when the watch is made, raises:
start-up decides what an unusable file means.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Stamp = tuple[tuple[int, int, int, int] | None, ...]


def stamp(paths: tuple[os.PathLike[str], ...]) -> Stamp:
    """What changes when a file is rewritten or replaced (None: cannot be stat'ed)."""
    stamps: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


class WatchedFiles(Generic[T]):
    """``read(in_use)`` of ``paths``, read again when they change (see the module's text).

    ``read`` gets the reading in use (None the first time): it may refuse a new reading
    that must not replace it (raise one of ``errors``). ``changed(old, new)`` runs, under
    the watch's lock, before a new reading replaces the one in use; ``refused`` starts
    the warning logged on ``log`` when a reading fails."""

    def __init__(
        self,
        paths: tuple[os.PathLike[str], ...],
        read: Callable[[T | None], T],
        *,
        errors: tuple[type[Exception], ...],
        log: logging.Logger,
        refused: str,
        changed: Callable[[T, T], None] | None = None,
    ) -> None:
        self._paths = paths
        self._read = read
        self._errors = errors
        self._log = log
        self._refused_text = refused
        self._changed = changed
        self._lock = threading.Lock()
        self._stamp = stamp(paths)  # taken before reading: a change made meanwhile is seen
        self._value = read(None)
        self._refused: Stamp | None = None  # changed files whose reading failed

    @property
    def value(self) -> T:
        """The reading in use, without looking at the files."""
        return self._value

    def current(self) -> T:
        """The reading in use, after reading the files again if they changed."""
        now = stamp(self._paths)
        if now == self._stamp or now == self._refused:
            return self._value
        with self._lock:
            if now == self._stamp or now == self._refused:
                return self._value  # another caller read them while this one waited
            try:
                value = self._read(self._value)
            except self._errors as exc:
                self._refused = now
                self._log.warning("%s: %s", self._refused_text, exc)
                return self._value
            if self._changed is not None:
                self._changed(self._value, value)
            self._value, self._stamp, self._refused = value, now, None
            return value
