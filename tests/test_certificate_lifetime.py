"""Client certificates are short-lived and renewable; an expired one is refused.

``scripts/pki.py issue`` gives a client certificate 24 hours unless ``--hours``
says otherwise; ``renew`` gives an identity that has a certificate a new key and a
new serial for the same SPIFFE id (with ``--if-within H`` only when the current
one ends within H hours). A certificate past its end is refused by the TLS layer:
the call never reaches the signer. A connection opened before the end serves no
call after it (``UNAUTHENTICATED``, ``CLIENT_CERT_EXPIRED``), and no connection
lives longer than ``server.max_connection_age_seconds`` between two handshakes.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from paywarden.signer.api.server import server_options
from paywarden.signer.config import Config
from paywarden.signer.errors import Reason

from tests.attacks.certs import client_cert, spiffe
from tests.helpers import Pki, TestToken, reason_of, serve, write_config
from tests.support.cli import pki_script
from tests.support.clients import public_keys

TIMEOUT = 10
SLACK = dt.timedelta(minutes=1)  # the run's own duration between issuing and reading back
# Of the certificate whose connection outlives it: long enough for its first call.
LIFETIME = dt.timedelta(seconds=4)


def _cert(d: Path, stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())


def _lifetime(cert: x509.Certificate) -> dt.timedelta:
    """From now to the certificate's end."""
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC)


def test_a_client_certificate_lasts_24_hours_unless_told_otherwise(pki_copy: Pki) -> None:
    d = str(pki_copy.dir)
    default = pki_script("issue", "--dir", d, "--role", "agent", "--id", "short-1")
    assert default.returncode == 0, default.stderr
    assert abs(_lifetime(_cert(pki_copy.dir, "agent-short-1")) - dt.timedelta(hours=24)) < SLACK
    told = pki_script("issue", "--dir", d, "--role", "agent", "--id", "short-2", "--hours", "2.5")
    assert told.returncode == 0, told.stderr
    assert abs(_lifetime(_cert(pki_copy.dir, "agent-short-2")) - dt.timedelta(hours=2.5)) < SLACK


@pytest.mark.parametrize("hours", ["0", "-1", "abc", "87601"])
def test_a_lifetime_that_is_not_a_positive_number_of_hours_is_refused(
    pki_copy: Pki, hours: str
) -> None:
    d = str(pki_copy.dir)
    done = pki_script("issue", "--dir", d, "--role", "agent", "--id", "x", "--hours", hours)
    assert done.returncode == 2
    assert "--hours" in done.stderr
    assert not (pki_copy.dir / "agent-x.crt").exists()


def test_renew_gives_a_new_key_and_serial_for_the_same_identity(
    pki_copy: Pki, grpc_addr: str, grpc_server: grpc.Server
) -> None:
    before = _cert(pki_copy.dir, "agent-agent-1")
    key_before = (pki_copy.dir / "agent-agent-1.key").read_bytes()
    done = pki_script("renew", "--dir", str(pki_copy.dir), "--role", "agent", "--id", "agent-1",
                "--hours", "6")  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = _cert(pki_copy.dir, "agent-agent-1")
    assert after.serial_number != before.serial_number
    assert (pki_copy.dir / "agent-agent-1.key").read_bytes() != key_before
    assert (pki_copy.dir / "agent-agent-1.key").stat().st_mode & 0o777 == 0o600
    assert abs(_lifetime(after) - dt.timedelta(hours=6)) < SLACK
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        spiffe(pki_copy, "agent", "agent-1")
    ]
    assert not list(pki_copy.dir.glob(".*.new"))  # written aside, then renamed
    # The renewed certificate is a working identity on the running signer.
    with pki_copy.channel(grpc_addr, "agent", "agent-1") as ch:
        assert len(public_keys(ch, TIMEOUT).keys) == 2


def test_renew_if_within_renews_only_a_certificate_that_ends_sooner(pki_copy: Pki) -> None:
    d = str(pki_copy.dir)
    serial = _cert(pki_copy.dir, "agent-agent-2").serial_number  # issued for 24 hours
    kept = pki_script("renew", "--dir", d, "--role", "agent", "--id", "agent-2", "--if-within", "1")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("agent-agent-2: valid until ") and "nothing done" in kept.stdout
    assert _cert(pki_copy.dir, "agent-agent-2").serial_number == serial
    renewed = pki_script(
        "renew", "--dir", d, "--role", "agent", "--id", "agent-2", "--if-within", "48"
    )
    assert renewed.returncode == 0, renewed.stderr
    assert _cert(pki_copy.dir, "agent-agent-2").serial_number != serial


def test_renew_of_an_identity_without_a_certificate_fails(pki_copy: Pki) -> None:
    done = pki_script("renew", "--dir", str(pki_copy.dir), "--role", "agent", "--id", "nobody")
    assert done.returncode == 1
    assert done.stderr == "pki.py: agent-nobody.crt: no certificate to renew; issue one first\n"
    assert not (pki_copy.dir / "agent-nobody.crt").exists()


def test_a_certificate_past_its_end_is_refused_by_the_tls_layer(
    pki: Pki, grpc_addr: str, grpc_server: grpc.Server
) -> None:
    uri = spiffe(pki, "agent", "agent-1")
    with client_cert(pki, uri).channel(grpc_addr, pki) as ch:  # the same leaf, in date
        assert len(public_keys(ch, TIMEOUT).keys) == 2
    with (
        pytest.raises(grpc.RpcError) as info,
        client_cert(pki, uri, expired=True).channel(grpc_addr, pki) as ch,
    ):
        public_keys(ch, TIMEOUT)
    # The handshake fails: no status from the signer, no reason code, only the transport's.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_key_is_never_written_into_a_readable_file_left_by_a_crash(pki_copy: Pki) -> None:
    left = pki_copy.dir / ".agent-agent-2.key.new"
    left.write_bytes(b"left behind\n")
    left.chmod(0o644)
    done = pki_script("renew", "--dir", pki_copy.dir, "--role", "agent", "--id", "agent-2")
    assert done.returncode == 0, done.stderr
    assert (pki_copy.dir / "agent-agent-2.key").stat().st_mode & 0o777 == 0o600
    assert not left.exists()


def test_a_call_on_a_connection_opened_before_the_certificate_ended_is_refused(
    pki: Pki, grpc_addr: str, grpc_server: grpc.Server
) -> None:
    ends = dt.datetime.now(dt.UTC).replace(microsecond=0) + LIFETIME
    leaf = client_cert(pki, spiffe(pki, "agent", "agent-1"), ends=ends)
    with leaf.channel(grpc_addr, pki) as ch:
        assert len(public_keys(ch, TIMEOUT).keys) == 2  # the handshake: in date
        while dt.datetime.now(dt.UTC) <= ends + dt.timedelta(seconds=1):
            time.sleep(0.1)  # waits for the certificate's end (RFC 5280: notAfter is in it)
        with pytest.raises(grpc.RpcError) as info:
            public_keys(ch, TIMEOUT)  # the same connection: no new handshake
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == Reason.CLIENT_CERT_EXPIRED


def test_connections_live_an_hour_between_handshakes_unless_told_otherwise() -> None:
    options = dict(server_options(Config()))
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    told = Config.model_validate(
        {"server": {"max_connection_age_seconds": 120, "max_connection_age_grace_seconds": 5}}
    )
    options = dict(server_options(told))
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 5_000


def test_an_open_connection_is_handshaken_again_after_its_maximum_age(
    tmp_path: Path, token: TestToken, pki_copy: Pki
) -> None:
    config = write_config(tmp_path / "signer", token, pki_copy)
    env = {
        "PAYWARDEN_SERVER__MAX_CONNECTION_AGE_SECONDS": "1",
        "PAYWARDEN_SERVER__MAX_CONNECTION_AGE_GRACE_SECONDS": "1",
    }
    with serve(config, env=env) as signer, pki_copy.channel(signer.addr, "agent", "agent-1") as ch:
        assert len(public_keys(ch, TIMEOUT).keys) == 2
        # A server certificate that does not name "localhost": only a new handshake sees it.
        renewed = pki_script("server", "--dir", pki_copy.dir, "--dns", "renewed.test", "--force")
        assert renewed.returncode == 0, renewed.stderr
        deadline = time.monotonic() + 60
        while True:
            try:
                public_keys(ch, TIMEOUT)
            except grpc.RpcError as exc:  # the connection aged out; its successor failed
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                break
            assert time.monotonic() < deadline, "the open connection was never handshaken again"
            time.sleep(0.2)
