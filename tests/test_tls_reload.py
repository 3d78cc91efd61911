"""The running signer follows its TLS files: no restart, no failed call.

A real ``paywarden serve`` on a copy of the test PKI. While a client keeps
calling on one connection, the server certificate or the client CA bundle is
replaced on disk: the next new connection gets the new files, the calls on the
open connection never fail. A set of files that fails its checks is not used.
A CA taken out of the bundle refuses the next call of a connection opened under it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from paywarden.signer.errors import Reason

from tests.helpers import Pki, TestToken, reason_of, serve, write_config
from tests.support.cli import pki_script
from tests.support.clients import public_keys

TIMEOUT = 10


class _KeepCalling:
    """A thread that calls GetPublicKeys on one connection until told to stop."""

    def __init__(self, pki: Pki, addr: str) -> None:
        self._channel = pki.channel(addr, "agent", "agent-1")
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self.calls = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                public_keys(self._channel, TIMEOUT)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
            with self._progress:
                self.calls += 1
                self._progress.notify_all()

    def wait_for_more(self, more: int) -> None:
        """Returns once ``more`` further calls have been answered (a readiness probe)."""
        with self._progress:
            target = self.calls + more
            assert self._progress.wait_for(lambda: self.calls >= target, timeout=60)

    @contextmanager
    def running(self) -> Iterator[_KeepCalling]:
        self._thread.start()
        try:
            self.wait_for_more(5)
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)
            self._channel.close()


def _channel(pki: Pki, addr: str, server_name: str, client: Pki | None = None) -> grpc.Channel:
    """Trusts ``pki``'s CA file, expects ``server_name`` in the server certificate."""
    key, cert = (client or pki).cert("agent", "agent-1")
    creds = grpc.ssl_channel_credentials(pki.ca, key, cert)
    options = [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(addr, creds, options=options)


def _new_connection_answered(
    pki: Pki, addr: str, server_name: str, client: Pki | None = None
) -> bool:
    """Whether a new connection is answered (False: its handshake was refused)."""
    with _channel(pki, addr, server_name, client) as ch:
        try:
            public_keys(ch, TIMEOUT)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


def _replace(path: Path, data: bytes) -> None:
    aside = path.with_name(path.name + ".new")
    aside.write_bytes(data)
    aside.replace(path)


def test_a_new_server_certificate_is_served_without_a_failed_call(
    tmp_path: Path, token: TestToken, pki_copy: Pki
) -> None:
    with serve(write_config(tmp_path / "signer", token, pki_copy)) as signer:
        assert not _new_connection_answered(
            pki_copy, signer.addr, "renewed.test"
        )  # not in this certificate
        with _KeepCalling(pki_copy, signer.addr).running() as caller:
            renewed = pki_script(
                "server", "--dir", pki_copy.dir, "--dns", "renewed.test", "--force"
            )
            assert renewed.returncode == 0, renewed.stderr
            # The next connection gets the new certificate, and only it.
            assert _new_connection_answered(pki_copy, signer.addr, "renewed.test")
            assert not _new_connection_answered(pki_copy, signer.addr, "localhost")
            caller.wait_for_more(5)
        assert caller.errors == []
        assert caller.calls >= 10


def test_a_new_client_ca_bundle_is_trusted_by_the_handshake_and_the_identity_check(
    tmp_path: Path, token: TestToken, pki_copy: Pki, rogue_pki: Pki
) -> None:
    first = pki_copy.ca
    with serve(write_config(tmp_path / "signer", token, pki_copy)) as signer:
        assert not _new_connection_answered(pki_copy, signer.addr, "localhost", client=rogue_pki)
        with _KeepCalling(pki_copy, signer.addr).running() as caller:
            _replace(pki_copy.dir / "ca.crt", pki_copy.ca + rogue_pki.ca)
            assert _new_connection_answered(pki_copy, signer.addr, "localhost", client=rogue_pki)
            caller.wait_for_more(5)  # the first CA is still in the bundle
        assert caller.errors == []
        # A bundle without the other CA again: its certificates are refused again.
        _replace(pki_copy.dir / "ca.crt", first)
        assert not _new_connection_answered(pki_copy, signer.addr, "localhost", client=rogue_pki)
        assert _new_connection_answered(pki_copy, signer.addr, "localhost")


def test_a_ca_taken_out_of_the_bundle_refuses_the_next_call_on_an_open_connection(
    tmp_path: Path, token: TestToken, pki_copy: Pki, rogue_pki: Pki
) -> None:
    first = pki_copy.ca
    _replace(pki_copy.dir / "ca.crt", first + rogue_pki.ca)
    with (
        serve(write_config(tmp_path / "signer", token, pki_copy)) as signer,
        _channel(pki_copy, signer.addr, "localhost", client=rogue_pki) as rogue,
        _channel(pki_copy, signer.addr, "localhost") as kept,
    ):
        assert len(public_keys(rogue, TIMEOUT).keys) == 2  # both connections open
        assert len(public_keys(kept, TIMEOUT).keys) == 2
        _replace(pki_copy.dir / "ca.crt", first)  # the rogue CA is taken out
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                public_keys(rogue, TIMEOUT)  # the same connection, no new handshake
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
            assert reason_of(info.value) == Reason.CLIENT_CERT_PROFILE
            assert len(public_keys(kept, TIMEOUT).keys) == 2  # its CA is still in


@pytest.mark.parametrize("broken", ["garbage certificate", "key of another certificate"])
def test_files_that_fail_their_checks_leave_the_ones_in_use(
    tmp_path: Path, token: TestToken, pki_copy: Pki, broken: str
) -> None:
    with serve(write_config(tmp_path / "signer", token, pki_copy)) as signer:
        if broken == "garbage certificate":
            _replace(pki_copy.dir / "server.crt", b"not a certificate\n")
        else:
            _replace(pki_copy.dir / "server.key", (pki_copy.dir / "agent-agent-2.key").read_bytes())
        with _KeepCalling(pki_copy, signer.addr).running() as caller:
            for _ in range(3):  # every new connection still gets the certificate in use
                assert _new_connection_answered(pki_copy, signer.addr, "localhost")
        assert caller.errors == []
    warnings = [line for line in signer.output if "TLS files changed but" in line]
    assert len(warnings) == 1, signer.output  # said once, not at every handshake
