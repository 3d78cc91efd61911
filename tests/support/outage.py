"""A broken middlebox between an agent and the signer, on demand: a plain gRPC server that
answers with a status the signer never writes (the network's outage is
:class:`tests.support.faults.OutageProxy`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
from paywarden.v1 import signer_pb2


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
