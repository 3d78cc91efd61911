"""Readiness probes on threads: where another thread is now, without sleeping."""

from __future__ import annotations

import sys
import threading


def waiting_in(thread: threading.Thread, qualname: str) -> bool:
    """Is ``thread`` now inside the function named ``qualname`` (e.g.
    ``"GroupCommit.run"``, or a nested function's name), at any depth of its stack?"""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        name = frame.f_code.co_qualname
        if name == qualname or name.endswith("." + qualname):
            return True
        frame = frame.f_back
    return False


def inside(qualname: str) -> bool:
    """Is the calling thread inside ``qualname`` (see :func:`waiting_in`)?"""
    return waiting_in(threading.current_thread(), qualname)


def start_and_wait_until_in(thread: threading.Thread, qualname: str) -> None:
    """Starts ``thread`` and returns once it is inside ``qualname``; fails if it ends first."""
    thread.start()
    while thread.is_alive() and not waiting_in(thread, qualname):
        pass
    assert thread.is_alive(), f"{thread.name} ended before it reached {qualname}"
