"""TCP proxies that lose what a signer answers: the faults a real network makes, on demand.

Mutual TLS runs end to end through them (they see only ciphertext), so they decide at the TCP
level, on a probe the test gives (``answered()``: the store shows the decision committed, so the
server is about to answer). A server commits before it answers, so its answer always comes after
the probe turns true, and no timing is involved.

- :class:`AnswerDroppingProxy` loses one answer: on the first connection it forwards every byte
  both ways until the probe is true; the first bytes the server sends after that are never
  forwarded, and both sides of that connection are cut. Later connections are untouched.
- :class:`OutageProxy` is a network that goes down once the probe is true and stays down until
  the test heals it: any byte the server sends meanwhile (an answer, or a later connection's
  TLS handshake) is withheld and that connection cut, however often the client retries.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar


class CuttingProxy:
    """127.0.0.1:<port> -> ``upstream``: forwards bytes both ways, and cuts a connection (both
    sides) instead of forwarding server bytes that :meth:`_withhold` keeps back."""

    def __init__(self, upstream: tuple[str, int], answered: Callable[[], bool]) -> None:
        self._upstream = upstream
        self._answered = answered
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        """Connections accepted so far."""

    @property
    def addr(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> None:
        self._spawn(self._accept)

    def close(self) -> None:
        """Stops accepting, closes every connection and joins every thread. (Closing the
        listener alone does not wake a thread blocked in accept(): shutting it down does.)"""
        _shut_down(self._listener)
        with self._lock:
            for sock in self._sockets:
                _shut_down(sock)
        for thread in list(self._threads):
            thread.join(timeout=30)

    def _withhold(self, data: bytes, first_connection: bool) -> bool:
        """Whether ``data``, from the server, must not reach the client (the connection is
        then cut)."""
        raise NotImplementedError

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
            self._spawn(self._pump, client, server, False, first)
            self._spawn(self._pump, server, client, True, first)

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool, first: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if from_server and self._withhold(data, first):
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        _shut_down(src)
        _shut_down(dst)


class AnswerDroppingProxy(CuttingProxy):
    """Drops the first answer the server gives once ``answered()``, on the first connection."""

    def __init__(self, upstream: tuple[str, int], answered: Callable[[], bool]) -> None:
        super().__init__(upstream, answered)
        self.cut = threading.Event()
        """Set once the answer was dropped and the first connection cut."""
        self.withheld = 0
        """Bytes of the server's that never reached the client."""

    def _withhold(self, data: bytes, first_connection: bool) -> bool:
        if first_connection and not self.cut.is_set() and self._answered():
            self.withheld += len(data)
            self.cut.set()
            return True
        return False


class OutageProxy(CuttingProxy):
    """Cuts every answer once ``answered()``, until :meth:`heal`."""

    def __init__(self, upstream: tuple[str, int], answered: Callable[[], bool]) -> None:
        super().__init__(upstream, answered)
        self._healed = threading.Event()
        self.cuts = 0
        """Connections cut because the server spoke during the outage."""
        self.first_cut = threading.Event()
        """Set once a connection was cut (the outage has begun)."""

    def heal(self) -> None:
        """Ends the outage: later bytes are forwarded."""
        self._healed.set()

    def _withhold(self, data: bytes, first_connection: bool) -> bool:
        if self._healed.is_set() or not self._answered():
            return False
        with self._lock:
            self.cuts += 1
        self.first_cut.set()
        return True


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


P = TypeVar("P", bound=CuttingProxy)


@contextmanager
def _started(proxy: P) -> Iterator[P]:
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


def answer_dropping_proxy(
    upstream: tuple[str, int], answered: Callable[[], bool]
) -> AbstractContextManager[AnswerDroppingProxy]:
    """A started :class:`AnswerDroppingProxy`, closed when the block ends."""
    return _started(AnswerDroppingProxy(upstream, answered))


def outage_proxy(
    upstream: tuple[str, int], answered: Callable[[], bool]
) -> AbstractContextManager[OutageProxy]:
    """A started :class:`OutageProxy`, closed when the block ends."""
    return _started(OutageProxy(upstream, answered))
