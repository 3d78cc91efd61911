"""Every console entry point exits quietly when the reader of its output goes away
(``paywarden audit export | head -1``).

Python ignores SIGPIPE, so a write to a pipe whose reader has exited raises
``BrokenPipeError``: uncaught, a traceback, and at exit a second complaint from the final
flush of stdout. As the Python documentation's "Note on SIGPIPE" (the ``signal`` module)
recommends, stdout is flushed while the error can still be caught, then pointed at
``/dev/null`` so that the interpreter's own flush at exit finds nothing to complain about.
Restoring SIGPIPE's default action instead would also kill the process on a write to a
closed socket (gRPC's), which is why it is not done.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE.value
"""141: what a shell reports for a tool that SIGPIPE stopped (``yes | head -1`` under
``set -o pipefail``), and no status of our own (1 failed check, 2 usage) is taken for it."""


def quiet_on_broken_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, exiting with :data:`BROKEN_PIPE_EXIT` and nothing on stderr when its
    stdout is a pipe that the reader closed (a status of its own other than 0 is kept).

    Only stdout's broken pipe is quieted: one on another file (an ``--out`` FIFO, a
    child's stdin, stderr) is a failure of the command and propagates. An exit through
    ``SystemExit`` (argparse's ``--help``, usage errors) keeps its status."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except BrokenPipeError:
            if not stdout_reader_gone():
                raise
            _stdout_to_devnull()
            return BROKEN_PIPE_EXIT
        except SystemExit:
            _flush_stdout()
            raise
        # What is still buffered meets the closed pipe here, not in the flush at exit.
        return code if _flush_stdout() else code or BROKEN_PIPE_EXIT

    return run


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (it polls with POLLERR)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by an in-memory stream, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _flush_stdout() -> bool:
    """Flushes stdout; False when its reader has gone (stdout then goes to /dev/null)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        _stdout_to_devnull()
        return False
    return True


def _stdout_to_devnull() -> None:
    """Points the stdout file descriptor at ``/dev/null`` (what is left in its buffer is
    then written there at exit); a stdout without a descriptor is left as it is."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by an in-memory stream, or closed
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
