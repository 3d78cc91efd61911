"""``server.crl_file``: a CRL the security team publishes revokes certificates too.

A real ``paywarden serve`` with a CRL signed by the test CA. The serials it lists
are refused ``PERMISSION_DENIED`` (``IDENTITY_REVOKED``) on their next call; a
new CRL written over the file is honoured from the next call, without a restart;
a CRL that is not signed by a client CA stops start-up, and a broken one written
while the signer runs leaves the list in use, as does an older one (an earlier
thisUpdate or a lower CRL number), however validly signed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from paywarden.signer.errors import Reason

from tests.attacks.certs import Issuer, ca_of
from tests.helpers import Pki, TestToken, reason_of, serve, write_config
from tests.support.clients import public_keys

TIMEOUT = 10


def _agent_serial(pki: Pki, agent: str) -> int:
    return x509.load_pem_x509_certificate(pki.cert("agent", agent)[1]).serial_number


def _crl(
    issuer: Issuer,
    serials: list[int],
    *,
    der: bool = False,
    age: dt.timedelta = dt.timedelta(minutes=5),
    number: int | None = None,
) -> bytes:
    """A CRL whose thisUpdate is ``age`` ago, with a CRL number if ``number`` is given."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - age)
        .next_update(now + dt.timedelta(days=1))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    aside = path.with_name(path.name + ".new")
    aside.write_bytes(data)
    aside.replace(path)


def _outcome(pki: Pki, addr: str, agent: str) -> str:
    """``ok``, or the refusal's status and reason, of one call as ``agent``."""
    with pki.channel(addr, "agent", agent) as ch:
        try:
            public_keys(ch, TIMEOUT)
        except grpc.RpcError as exc:
            return f"{exc.code().name} {reason_of(exc)}"
    return "ok"


REVOKED = f"PERMISSION_DENIED {Reason.IDENTITY_REVOKED}"


@pytest.mark.parametrize("der", [False, True], ids=["pem", "der"])
def test_the_serials_a_crl_lists_are_refused_and_a_new_crl_is_read_without_a_restart(
    tmp_path: Path, token: TestToken, pki: Pki, der: bool
) -> None:
    crl = tmp_path / "clients.crl"
    _write(crl, _crl(ca_of(pki), [_agent_serial(pki, "agent-2")], der=der))
    env = {"PAYWARDEN_SERVER__CRL_FILE": str(crl)}
    with serve(write_config(tmp_path / "signer", token, pki), env=env) as signer:
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        assert _outcome(pki, signer.addr, "agent-1") == "ok"
        _write(crl, _crl(ca_of(pki), [_agent_serial(pki, "agent-1")], der=der))
        assert _outcome(pki, signer.addr, "agent-1") == REVOKED
        assert _outcome(pki, signer.addr, "agent-2") == "ok"  # no longer listed


def test_a_crl_not_signed_by_a_client_ca_stops_start_up(
    tmp_path: Path, token: TestToken, pki: Pki, rogue_pki: Pki
) -> None:
    crl = tmp_path / "clients.crl"
    _write(crl, _crl(ca_of(rogue_pki), [_agent_serial(pki, "agent-2")]))
    env = {"PAYWARDEN_SERVER__CRL_FILE": str(crl)}
    with (
        pytest.raises(RuntimeError, match=r"server\.crl_file: .* is not signed by a CA"),
        serve(write_config(tmp_path / "signer", token, pki), env=env),
    ):
        pass


@pytest.mark.parametrize("broken", ["garbage", "rogue"])
def test_a_broken_crl_written_while_serving_leaves_the_list_in_use(
    tmp_path: Path, token: TestToken, pki: Pki, rogue_pki: Pki, broken: str
) -> None:
    crl = tmp_path / "clients.crl"
    _write(crl, _crl(ca_of(pki), [_agent_serial(pki, "agent-2")]))
    env = {"PAYWARDEN_SERVER__CRL_FILE": str(crl)}
    with serve(write_config(tmp_path / "signer", token, pki), env=env) as signer:
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        replacement = b"not a CRL" if broken == "garbage" else _crl(ca_of(rogue_pki), [])
        _write(crl, replacement)
        for _ in range(3):
            assert _outcome(pki, signer.addr, "agent-2") == REVOKED
            assert _outcome(pki, signer.addr, "agent-1") == "ok"
    warnings = [line for line in signer.output if "crl_file changed but" in line]
    assert len(warnings) == 1, signer.output


def test_an_older_crl_never_replaces_the_one_in_use(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    crl, ca = tmp_path / "clients.crl", ca_of(pki)
    revoked = [_agent_serial(pki, "agent-2")]
    _write(crl, _crl(ca, revoked, age=dt.timedelta(minutes=10), number=5))
    env = {"PAYWARDEN_SERVER__CRL_FILE": str(crl)}
    with serve(write_config(tmp_path / "signer", token, pki), env=env) as signer:
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        # Validly signed, but issued before the list in use: it would lift agent-2's revocation.
        _write(crl, _crl(ca, [], age=dt.timedelta(hours=1), number=6))
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        _write(crl, _crl(ca, [], age=dt.timedelta(minutes=1), number=4))  # newer, lower number
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        _write(crl, _crl(ca, revoked, age=dt.timedelta(minutes=10), number=5))  # the same again
        assert _outcome(pki, signer.addr, "agent-2") == REVOKED
        _write(crl, _crl(ca, [], age=dt.timedelta(minutes=1), number=6))  # a newer one is read
        assert _outcome(pki, signer.addr, "agent-2") == "ok"
    warnings = [line for line in signer.output if "crl_file changed but" in line]
    assert len(warnings) == 2, signer.output  # once for each refused CRL, not at every call
    assert "is older (thisUpdate" in warnings[0]
    assert "has a lower CRL number (4) than the CRL in use (5)" in warnings[1]
