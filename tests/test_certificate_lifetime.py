"""Client certificates are short-lived and renewable; an expired one is refused.

``scripts/pki.py issue`` gives a client certificate 24 hours unless ``--hours``
says otherwise; ``renew`` gives an identity that has a certificate a new key and a
new serial for the same SPIFFE id (with ``--if-within H`` only when the current
one ends within H hours). A certificate past its end is refused by the TLS layer:
the call never reaches the signer.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from tests.attacks.certs import client_cert, spiffe
from tests.helpers import ROOT, Pki
from tests.support.clients import public_keys

TIMEOUT = 10
SLACK = dt.timedelta(minutes=1)  # the run's own duration between issuing and reading back


def _pki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/pki.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def own_pki(tmp_path: Path, pki: Pki) -> Pki:
    """A copy of the run's PKI (same CA, so the run's server trusts it) to write in."""
    d = tmp_path / "pki"
    shutil.copytree(pki.dir, d)
    return Pki(d, pki.trust_domain)


def _cert(d: Path, stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())


def _lifetime(cert: x509.Certificate) -> dt.timedelta:
    """From now to the certificate's end."""
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC)


def test_a_client_certificate_lasts_24_hours_unless_told_otherwise(own_pki: Pki) -> None:
    d = str(own_pki.dir)
    default = _pki("issue", "--dir", d, "--role", "agent", "--id", "short-1")
    assert default.returncode == 0, default.stderr
    assert abs(_lifetime(_cert(own_pki.dir, "agent-short-1")) - dt.timedelta(hours=24)) < SLACK
    told = _pki("issue", "--dir", d, "--role", "agent", "--id", "short-2", "--hours", "2.5")
    assert told.returncode == 0, told.stderr
    assert abs(_lifetime(_cert(own_pki.dir, "agent-short-2")) - dt.timedelta(hours=2.5)) < SLACK


@pytest.mark.parametrize("hours", ["0", "-1", "abc", "87601"])
def test_a_lifetime_that_is_not_a_positive_number_of_hours_is_refused(
    own_pki: Pki, hours: str
) -> None:
    d = str(own_pki.dir)
    done = _pki("issue", "--dir", d, "--role", "agent", "--id", "x", "--hours", hours)
    assert done.returncode == 2
    assert "--hours" in done.stderr
    assert not (own_pki.dir / "agent-x.crt").exists()


def test_renew_gives_a_new_key_and_serial_for_the_same_identity(
    own_pki: Pki, grpc_addr: str, grpc_server: grpc.Server
) -> None:
    before = _cert(own_pki.dir, "agent-agent-1")
    key_before = (own_pki.dir / "agent-agent-1.key").read_bytes()
    done = _pki("renew", "--dir", str(own_pki.dir), "--role", "agent", "--id", "agent-1",
                "--hours", "6")  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = _cert(own_pki.dir, "agent-agent-1")
    assert after.serial_number != before.serial_number
    assert (own_pki.dir / "agent-agent-1.key").read_bytes() != key_before
    assert (own_pki.dir / "agent-agent-1.key").stat().st_mode & 0o777 == 0o600
    assert abs(_lifetime(after) - dt.timedelta(hours=6)) < SLACK
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        spiffe(own_pki, "agent", "agent-1")
    ]
    assert not list(own_pki.dir.glob(".*.new"))  # written aside, then renamed
    # The renewed certificate is a working identity on the running signer.
    with own_pki.channel(grpc_addr, "agent", "agent-1") as ch:
        assert len(public_keys(ch, TIMEOUT).keys) == 2


def test_renew_if_within_renews_only_a_certificate_that_ends_sooner(own_pki: Pki) -> None:
    d = str(own_pki.dir)
    serial = _cert(own_pki.dir, "agent-agent-2").serial_number  # issued for 24 hours
    kept = _pki("renew", "--dir", d, "--role", "agent", "--id", "agent-2", "--if-within", "1")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("agent-agent-2: valid until ") and "nothing done" in kept.stdout
    assert _cert(own_pki.dir, "agent-agent-2").serial_number == serial
    renewed = _pki("renew", "--dir", d, "--role", "agent", "--id", "agent-2", "--if-within", "48")
    assert renewed.returncode == 0, renewed.stderr
    assert _cert(own_pki.dir, "agent-agent-2").serial_number != serial


def test_renew_of_an_identity_without_a_certificate_fails(own_pki: Pki) -> None:
    done = _pki("renew", "--dir", str(own_pki.dir), "--role", "agent", "--id", "nobody")
    assert done.returncode == 1
    assert done.stderr == "pki.py: agent-nobody.crt: no certificate to renew; issue one first\n"
    assert not (own_pki.dir / "agent-nobody.crt").exists()


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
