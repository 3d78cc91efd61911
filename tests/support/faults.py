"""A TCP proxy that loses one answer on the way back: the fault a real network makes, on
demand.

Mutual TLS runs end to end through it (it sees only ciphertext), so it decides at the TCP
level: on the first connection it forwards every byte both ways until ``answered()`` is true
(the test's probe of the store: the server has committed the decision, and so is about to
answer). The first bytes the server sends after that are never forwarded: both sides of that
connection are cut instead. Later connections are forwarded untouched. A server commits before
it answers, so the answer always comes after the probe turns true, and no timing is involved.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AnswerDroppingProxy:
    """127.0.0.1:<port> -> ``upstream``, dropping the first answer given once ``answered()``."""

    def __init__(self, upstream: tuple[str, int], answered: Callable[[], bool]) -> None:
        self._upstream = upstream
        self._answered = answered
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        """Connections accepted so far."""
        self.cut = threading.Event()
        """Set once the answer was dropped and the first connection cut."""
        self.withheld = 0
        """Bytes of the server's that never reached the client."""

    @property
    def addr(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> None:
        self._spawn(self._accept)

    def close(self) -> None:
        """Stops accepting, closes every connection and joins every thread."""
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _shut_down(sock)
        for thread in list(self._threads):
            thread.join(timeout=30)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self.connections += 1
                first = self.connections == 1
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, first)

    def _pump(self, src: socket.socket, dst: socket.socket, dropping: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if dropping and not self.cut.is_set() and self._answered():
                self.withheld += len(data)
                self.cut.set()
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        _shut_down(src)
        _shut_down(dst)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@contextmanager
def answer_dropping_proxy(
    upstream: tuple[str, int], answered: Callable[[], bool]
) -> Iterator[AnswerDroppingProxy]:
    """A started :class:`AnswerDroppingProxy`, closed when the block ends."""
    proxy = AnswerDroppingProxy(upstream, answered)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
