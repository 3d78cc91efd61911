"""One client for the in-process stack: stubs by identity, each channel dialled once."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.v1 import (
    approvals_pb2_grpc,
    control_pb2_grpc,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.helpers import Pki, ServeProcess, reason_of, serve

Dial = Callable[[str, str], grpc.Channel]
"""(role, principal) -> a channel that presents that principal's certificate."""


class Api:
    """Stubs on one server. A channel per (role, principal), opened on first use and
    closed by whoever owns ``dial`` (the module-scoped ``dial`` fixture)."""

    def __init__(self, dial: Dial) -> None:
        self._dial = dial
        self._channels: dict[tuple[str, str], grpc.Channel] = {}

    def channel(self, role: str, principal: str) -> grpc.Channel:
        key = (role, principal)
        if key not in self._channels:
            self._channels[key] = self._dial(role, principal)
        return self._channels[key]

    def sessions(self, role: str, principal: str) -> sessions_pb2_grpc.SessionsStub:
        return sessions_pb2_grpc.SessionsStub(self.channel(role, principal))

    def signer_as(self, role: str, principal: str) -> signer_pb2_grpc.SignerStub:
        """Signer as any caller (only agents may sign; the others are refused)."""
        return signer_pb2_grpc.SignerStub(self.channel(role, principal))

    def signer_of(self, agent: str) -> signer_pb2_grpc.SignerStub:
        return self.signer_as("agent", agent)

    def approvals(self, role: str, principal: str) -> approvals_pb2_grpc.ApprovalsStub:
        return approvals_pb2_grpc.ApprovalsStub(self.channel(role, principal))

    def approver(self, principal: str) -> approvals_pb2_grpc.ApprovalsStub:
        """Approvals as ``principal`` with an approver certificate."""
        return self.approvals("approver", principal)

    def control(
        self, role: str = "operator", principal: str = "operator-1"
    ) -> control_pb2_grpc.ControlStub:
        return control_pb2_grpc.ControlStub(self.channel(role, principal))

    def sign(
        self,
        intent: signer_pb2.PaymentIntent,
        *,
        agent: str = "agent-1",
        timeout: float | None = 30,
    ) -> signer_pb2.SignResponse:
        """``agent`` asks to sign ``intent``; raises the call's error if refused."""
        resp: signer_pb2.SignResponse = self.signer_of(agent).Sign(
            signer_pb2.SignRequest(intent=intent), timeout=timeout
        )
        return resp

    def answer(
        self,
        intent: signer_pb2.PaymentIntent,
        *,
        agent: str = "agent-1",
        timeout: float | None = 30,
    ) -> signer_pb2.SignResponse | grpc.RpcError:
        """``agent`` asks to sign ``intent``: the response, or the error the call raised."""
        try:
            return self.sign(intent, agent=agent, timeout=timeout)
        except grpc.RpcError as err:
            return err

    # The callers most tests use.

    @property
    def planner(self) -> sessions_pb2_grpc.SessionsStub:
        """planner-1's Sessions stub."""
        return self.sessions("planner", "planner-1")

    @property
    def planner2(self) -> sessions_pb2_grpc.SessionsStub:
        """planner-2's Sessions stub."""
        return self.sessions("planner", "planner-2")

    @property
    def signer(self) -> signer_pb2_grpc.SignerStub:
        """agent-1's Signer stub."""
        return self.signer_of("agent-1")

    @property
    def signer2(self) -> signer_pb2_grpc.SignerStub:
        """agent-2's Signer stub."""
        return self.signer_of("agent-2")

    @property
    def agent_sessions(self) -> sessions_pb2_grpc.SessionsStub:
        """agent-1's Sessions stub."""
        return self.sessions("agent", "agent-1")

    @property
    def agent2_sessions(self) -> sessions_pb2_grpc.SessionsStub:
        """agent-2's Sessions stub."""
        return self.sessions("agent", "agent-2")


@contextmanager
def api_at(addr: str, pki: Pki) -> Iterator[Api]:
    """The shared client on the server at ``addr``; its channels are closed when the
    block ends."""
    with ExitStack() as channels:
        yield Api(lambda role, who: channels.enter_context(pki.channel(addr, role, who)))


@contextmanager
def served_api(srv: ServeProcess, pki: Pki) -> Iterator[Api]:
    """The shared client on a ``paywarden serve`` process; its channels are closed
    when the block ends."""
    with api_at(srv.addr, pki) as api:
        yield api


@contextmanager
def running_api(
    config: Path, pki: Pki, env: dict[str, str] | None = None
) -> Iterator[tuple[ServeProcess, Api]]:
    """``paywarden serve --config config`` and the shared client on it; the client's
    channels close before the server stops."""
    with serve(config, env=env) as srv, served_api(srv, pki) as api:
        yield srv, api


def signed(answer: signer_pb2.SignResponse | grpc.RpcError) -> signer_pb2.SignResponse:
    """``answer`` is a signature (status SIGNED, a compact JWS); returns it."""
    assert isinstance(answer, signer_pb2.SignResponse), (
        f"refused: {answer.code()} {reason_of(answer)}"
    )
    assert is_signed(answer)
    return answer


def public_keys(channel: grpc.Channel, timeout: float = 30) -> signer_pb2.GetPublicKeysResponse:
    """``GetPublicKeys`` on ``channel``: open to every role, so only the connection (the
    certificate, the server's state) decides whether it is answered."""
    return signer_pb2_grpc.SignerStub(channel).GetPublicKeys(
        signer_pb2.GetPublicKeysRequest(), timeout=timeout
    )


def jws_payload(signer: signer_pb2_grpc.SignerStub, token: str) -> bytes:
    """The payload of the compact JWS ``token``, checked by an independent JOSE library
    (joserfc) against the JWKS that ``signer`` serves; raises if it does not verify."""
    jwks = signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest()).jwks_json
    keys = KeySet.import_key_set(json.loads(jwks))
    payload: bytes = jws.deserialize_compact(token, keys, algorithms=["ES256"]).payload
    return payload


def sign_at_once(
    signer: signer_pb2_grpc.SignerStub, requests: Sequence[signer_pb2.SignRequest]
) -> tuple[list[signer_pb2.SignResponse], list[grpc.RpcError]]:
    """Sends every request at the same moment (a thread each, released together): the
    responses, and the errors the other calls raised, each in request order."""
    barrier = threading.Barrier(len(requests))

    def attempt(request: signer_pb2.SignRequest) -> signer_pb2.SignResponse | grpc.RpcError:
        barrier.wait()
        try:
            return signer.Sign(request)
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(attempt, requests))
    answers = [r for r in results if isinstance(r, signer_pb2.SignResponse)]
    return answers, [r for r in results if isinstance(r, grpc.RpcError)]


def is_signed(resp: signer_pb2.SignResponse) -> bool:
    """``resp`` carries a signature: status SIGNED and a compact JWS."""
    return resp.status == signer_pb2.SIGNED and resp.jws.count(".") == 2
