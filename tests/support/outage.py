"""Faults of the network between an agent and the signer, on demand: an outage, and a broken
middlebox.

A TCP proxy for a network that goes down after the signer committed and stays down until
the test heals it: the fault a real outage makes, on demand.

Mutual TLS runs end to end through it (it sees only ciphertext). While ``answered()`` is false
every byte is forwarded both ways (handshakes and requests reach the signer). Once it is true
(the test's probe of the store: a decision is committed) and until :meth:`heal`, any byte the
server sends (an answer, or a later connection's TLS handshake) is withheld and that connection
is cut: every attempt fails, however often the client retries. After :meth:`heal` everything is
forwarded. No timing is involved.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
from paywarden.v1 import signer_pb2


class OutageProxy:
    """127.0.0.1:<port> -> ``upstream``, cutting every answer once ``answered()`` until
    :meth:`heal`."""

    def __init__(self, upstream: tuple[str, int], answered: Callable[[], bool]) -> None:
        self._upstream = upstream
        self._answered = answered
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._healed = threading.Event()
        self.connections = 0
        """Connections accepted so far."""
        self.cuts = 0
        """Connections cut because the server spoke during the outage."""
        self.first_cut = threading.Event()
        """Set once a connection was cut (the outage has begun)."""

    @property
    def addr(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def heal(self) -> None:
        """Ends the outage: later bytes are forwarded."""
        self._healed.set()

    def start(self) -> None:
        self._spawn(self._accept)

    def close(self) -> None:
        """Stops accepting, closes every connection and joins every thread."""
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _hang_up(sock)
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
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _down(self) -> bool:
        return not self._healed.is_set() and self._answered()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if from_server and self._down():
                with self._lock:
                    self.cuts += 1
                self.first_cut.set()
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        _hang_up(src)
        _hang_up(dst)


def _hang_up(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@contextmanager
def outage_proxy(upstream: tuple[str, int], answered: Callable[[], bool]) -> Iterator[OutageProxy]:
    """A started :class:`OutageProxy`, closed when the block ends."""
    proxy = OutageProxy(upstream, answered)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def broken_middlebox(code: grpc.StatusCode) -> Iterator[str]:
    """A plain gRPC server on 127.0.0.1 answering every ``Signer.Sign`` with ``code`` and no
    ErrorInfo, as a broken proxy in front of the signer would (a fault the real signer never
    makes); its address."""

    def sign(request: signer_pb2.SignRequest, context: grpc.ServicerContext) -> None:
        context.abort(code, "upstream connect error or disconnect/reset before headers")

    handler = grpc.method_handlers_generic_handler(
        "paywarden.v1.Signer",
        {
            "Sign": grpc.unary_unary_rpc_method_handler(
                sign,
                request_deserializer=signer_pb2.SignRequest.FromString,
                response_serializer=signer_pb2.SignResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
