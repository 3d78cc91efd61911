"""An x402 resource server for the tests: a real HTTP server on 127.0.0.1 whose payment
handling is the x402 SDK's own (``x402HTTPResourceServerSync`` over
``x402ResourceServerSync``, the exact-EVM server scheme), with a local facilitator built
from the SDK's ``x402FacilitatorSync`` and its exact-EVM facilitator scheme over
:class:`~tests.support.x402_chain.SettlingEip3009Chain` (there is no chain in the tests).

What the SDK's Flask middleware does, done over the standard library's ``http.server``:
a request without ``PAYMENT-SIGNATURE`` is answered 402 with the ``PAYMENT-REQUIRED``
header (base64 of the x402 v2 ``PaymentRequired``); a request with one is verified by the
facilitator before the content is made, settled on the chain after it, and answered 200
with ``PAYMENT-RESPONSE``; a payment the facilitator refuses (a used nonce, a wrong payee)
is answered 402 again, with the reason in ``PAYMENT-REQUIRED``'s ``error``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from x402 import x402FacilitatorSync, x402ResourceServerSync
from x402.http import (
    HTTPRequestContext,
    HTTPResponseInstructions,
    PaymentOption,
    RouteConfig,
    x402HTTPResourceServerSync,
)
from x402.http.constants import PAYMENT_SIGNATURE_HEADER
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, ExactEvmServerScheme
from x402.schemas import AssetAmount

from tests.support.x402_chain import SettlingEip3009Chain

PATH = "/weather"
CONTENT = {"forecast": "sunny", "city": "Lisbon"}


@dataclass(frozen=True)
class Seen:
    """One request the resource server received."""

    path: str
    payment: str | None
    """Its ``PAYMENT-SIGNATURE`` (or legacy ``X-PAYMENT``) header, if any."""
    status: int
    """What it answered."""


class _Adapter:
    """x402's ``HTTPAdapter`` over one ``BaseHTTPRequestHandler`` request."""

    def __init__(self, handler: BaseHTTPRequestHandler, base_url: str) -> None:
        self._handler = handler
        self._url = urlsplit(handler.path)
        self._base_url = base_url

    def get_header(self, name: str) -> str | None:
        return self._handler.headers.get(name)

    def get_method(self) -> str:
        return self._handler.command

    def get_path(self) -> str:
        return self._url.path

    def get_url(self) -> str:
        return self._base_url + self._handler.path

    def get_accept_header(self) -> str:
        return self._handler.headers.get("Accept", "")

    def get_user_agent(self) -> str:
        return self._handler.headers.get("User-Agent", "")

    def get_query_params(self) -> dict[str, str | list[str]]:
        return dict(parse_qsl(self._url.query))

    def get_query_param(self, name: str) -> str | list[str] | None:
        return self.get_query_params().get(name)

    def get_body(self) -> Any:
        return None


@dataclass
class X402Shop:
    """A running resource server: ``url`` is its paid resource; ``seen`` what it received."""

    chain: SettlingEip3009Chain
    base_url: str = ""
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.base_url + PATH

    def payments(self) -> list[str]:
        """Every payment header it was sent, in order."""
        return [s.payment for s in self.seen if s.payment is not None]


def _payment_server(
    chain: SettlingEip3009Chain,
    pay_to: str,
    amount: str,
    max_timeout_seconds: int,
    extra: dict[str, Any] | None,
) -> x402HTTPResourceServerSync:
    """The x402 SDK's HTTP resource server for one route, with the local facilitator."""
    domain = chain.domain
    network = f"eip155:{domain.chain_id}"
    facilitator = x402FacilitatorSync()
    facilitator.register([network], ExactEvmFacilitatorScheme(chain))
    server = x402ResourceServerSync(facilitator)
    # x402 2.25's own scheme types its payment_flows looser than the Protocol it meets.
    server.register(network, ExactEvmServerScheme())  # type: ignore[arg-type]
    price = AssetAmount(
        amount=amount,
        asset=domain.verifying_contract,
        extra={"name": domain.name, "version": domain.version, **(extra or {})},
    )
    option = PaymentOption(
        scheme="exact",
        pay_to=pay_to,
        price=price,
        network=network,
        max_timeout_seconds=max_timeout_seconds,
    )
    route = RouteConfig(accepts=option, description="today's weather", mime_type="application/json")
    http = x402HTTPResourceServerSync(server, {f"GET {PATH}": route})
    http.initialize()
    return http


@contextmanager
def x402_shop(
    chain: SettlingEip3009Chain,
    pay_to: str,
    amount: str,
    *,
    max_timeout_seconds: int = 60,
    extra: dict[str, Any] | None = None,
) -> Iterator[X402Shop]:
    """A resource server on 127.0.0.1 selling ``PATH`` for ``amount`` atomic units of the
    chain's token, paid to ``pay_to``; stopped when the block ends."""
    shop = X402Shop(chain)
    payments = _payment_server(chain, pay_to, amount, max_timeout_seconds, extra)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:  # one payment at a time: verify, serve, settle
                self._answer()

        def _answer(self) -> None:
            context = HTTPRequestContext(
                adapter=_Adapter(self, shop.base_url),
                path=urlsplit(self.path).path,
                method="GET",
                payment_header=self.headers.get(PAYMENT_SIGNATURE_HEADER),
            )
            result = payments.process_http_request(context)
            if result.type == "no-payment-required":
                self._send(404, {}, {"error": "not found"})
                return
            if result.type == "payment-error":
                assert result.response is not None
                self._reply(result.response)
                return
            assert result.payment_payload is not None and result.payment_requirements is not None
            settled = payments.process_settlement(
                result.payment_payload, result.payment_requirements, context=context
            )
            if not settled.success:
                assert settled.response is not None
                self._reply(settled.response)
                return
            self._send(200, settled.headers, CONTENT)

        def _reply(self, response: HTTPResponseInstructions) -> None:
            self._send(response.status, response.headers, response.body or {})

        def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
            """Answers, after recording the request (so a client that has its answer
            finds it in ``seen``)."""
            payment = self.headers.get(PAYMENT_SIGNATURE_HEADER) or self.headers.get("X-PAYMENT")
            shop.seen.append(Seen(self.path, payment, status))
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test asserts on ``seen``

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    shop.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield shop
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=30)
