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
    stdout is a pipe that the reader closed."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            # What is still buffered meets the closed pipe here, not in the flush at exit.
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
            return BROKEN_PIPE_EXIT
        return code

    return run


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
