"""Authentication and authorisation: who may call what, and who may see which session.

Everything over gRPC runs against the in-process server of the conftest (mutual
TLS, the test PKI); the identity parsing is also tested directly, with
certificates built here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from paywarden.signer.api.authz import RPC_ROLES
from paywarden.signer.api.status import ERROR_DOMAIN, to_grpc_status
from paywarden.signer.errors import NotAuthenticated, Reason
from paywarden.signer.identity import (
    Authenticator,
    Principal,
    Role,
    parse_spiffe,
    principal_from_auth_context,
)
from paywarden.v1 import (
    approvals_pb2,
    control_pb2,
    sessions_pb2,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.helpers import ROOT, Pki, Stack, reason_of
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.refusals import refused
from tests.support.sessions import get_session, open_request, opened_session

TRUST_DOMAIN = "paywarden.test"
SERVICES = (
    signer_pb2.DESCRIPTOR.services_by_name["Signer"],
    sessions_pb2.DESCRIPTOR.services_by_name["Sessions"],
    approvals_pb2.DESCRIPTOR.services_by_name["Approvals"],
    control_pb2.DESCRIPTOR.services_by_name["Control"],
)
PRINCIPAL_OF = {
    Role.AGENT: "agent-1",
    Role.PLANNER: "planner-1",
    Role.APPROVER: "approver-1",
    Role.OPERATOR: "operator-1",
    Role.PAYEE: "payee-1",
}
TASK = "buy one weather dataset for the forecast report"
SESSION_ID = re.compile(r"^ses_[A-Za-z0-9_-]{43}$")
UNKNOWN_SESSION = "ses_" + "A" * 43  # well formed, never issued
CALL_TIMEOUT = 10
# What this module's agents ask to sign, unless a test says otherwise.
authz_request = partial(
    sign_request,
    payee="acme-weather",
    amount="1.00",
    reference="inv-authz-1",
    purpose="weather data",
)


def _rpcs() -> list[tuple[str, Any]]:
    """(full method name, method descriptor) for every RPC of every service."""
    return [
        (f"/{service.full_name}/{method.name}", method)
        for service in SERVICES
        for method in service.methods
    ]


RPCS = _rpcs()


# -- helpers -------------------------------------------------------------------


def _error_infos(err: grpc.RpcError) -> list[error_details_pb2.ErrorInfo]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


def assert_status(err: grpc.RpcError, code: grpc.StatusCode, reason: Reason) -> None:
    """The code, and the reason in all three places: metadata, detail and message."""
    assert err.code() == code, (err.code(), err.details())
    assert reason_of(err) == reason.value
    infos = _error_infos(err)
    assert [(i.reason, i.domain) for i in infos] == [(reason.value, ERROR_DOMAIN)]
    assert (err.details() or "").startswith(f"[{reason.value}]")


@pytest.fixture(scope="module")
def session(api: Api) -> sessions_pb2.Session:
    """planner-1's session for agent-1 (USD 10.00, 600 s); nothing is ever spent in it."""
    return opened_session(api.planner, "agent-1", "10.00", task=TASK, ttl=600, timeout=CALL_TIMEOUT)


# -- 1. the role table, walked completely --------------------------------------


def _unbracketed(text: str) -> str:
    return re.sub(r"\([^)]*\)", "", text)


def _documented_roles() -> dict[str, frozenset[Role]]:
    """The roles each RPC's comment in the .proto files names ("// Roles: ...")."""
    documented: dict[str, frozenset[Role]] = {}
    for proto in sorted((ROOT / "proto" / "paywarden" / "v1").glob("*.proto")):
        text = proto.read_text(encoding="utf-8")
        service = ""
        roles_text: str | None = None
        for line in text.splitlines():
            line = line.strip()
            if m := re.match(r"service (\w+) \{", line):
                service = m.group(1)
            elif m := re.match(r"//\s*Roles:(.*)", line):
                roles_text = m.group(1)
            elif (
                roles_text is not None
                and line.startswith("//")
                and "." not in _unbracketed(roles_text)
            ):  # the list goes on on the next comment line, up to its full stop
                roles_text += " " + line[2:]
            elif m := re.match(r"rpc (\w+)\(", line):
                assert roles_text is not None, f"{service}.{m.group(1)} documents no roles"
                # "planner (sessions it opened), agent (its own sessions). More text."
                listed = _unbracketed(roles_text).split(".")[0]
                roles = frozenset(Role(r.strip()) for r in listed.split(","))
                documented[f"/paywarden.v1.{service}/{m.group(1)}"] = roles
                roles_text = None
    return documented


def test_role_table_has_exactly_one_entry_per_rpc() -> None:
    names = [name for name, _ in RPCS]
    assert len(names) == len(set(names)) == 26
    assert sorted(RPC_ROLES) == sorted(names)
    for name, roles in RPC_ROLES.items():
        assert roles, f"{name} allows nobody"
        assert roles <= set(Role), name


def test_role_table_matches_the_roles_documented_in_the_protos() -> None:
    assert RPC_ROLES == _documented_roles()


def test_agent_is_only_allowed_sign_own_session_status_public_keys_and_receipts() -> None:
    agent_may = {name for name, roles in RPC_ROLES.items() if Role.AGENT in roles}
    assert agent_may == {
        "/paywarden.v1.Signer/Sign",
        "/paywarden.v1.Signer/SignX402",
        "/paywarden.v1.Signer/GetPublicKeys",
        "/paywarden.v1.Signer/GetReceipt",
        "/paywarden.v1.Sessions/GetSession",
    }
    signers = {
        role
        for name, roles in RPC_ROLES.items()
        if name.endswith(("/Sign", "/SignX402"))
        for role in roles
    }
    assert signers == {Role.AGENT}


@pytest.mark.parametrize("role", list(Role), ids=str)
@pytest.mark.parametrize("rpc", RPCS, ids=[name for name, _ in RPCS])
def test_every_rpc_for_every_role(api: Api, rpc: tuple[str, Any], role: Role) -> None:
    name, method = rpc
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = api.channel(role.value, PRINCIPAL_OF[role]).unary_unary(
        name,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )

    def invoke() -> Message:
        return call(request_cls(), timeout=CALL_TIMEOUT)

    if role not in RPC_ROLES[name]:
        assert_status(refused(invoke), grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)
        return
    try:
        response = invoke()
    except grpc.RpcError as err:
        # An empty request may be invalid, but the role check must have passed,
        # the caller must have been authenticated and the refusal must be a clean one.
        assert reason_of(err) not in (None, Reason.ROLE_NOT_ALLOWED, Reason.NO_IDENTITY)
        assert err.code() not in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.UNAVAILABLE,
        ), (err.code(), err.details())
    else:
        assert isinstance(response, response_cls)


# -- 2. no certificate, or one from another CA: the handshake fails ------------


def test_client_without_certificate_fails_handshake(
    grpc_addr: str, grpc_create_channel: object, pki: Pki
) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with grpc.secure_channel(
        grpc_addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as ch:
        stub = signer_pb2_grpc.SignerStub(ch)
        # GetPublicKeys is open to every role: any handler reached would answer it.
        err = refused(
            lambda: stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT)
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(err) is None  # no handler ran, so no paywarden reason


@pytest.mark.parametrize(
    ("role", "principal"),
    [("agent", "agent-1"), ("planner", "planner-1"), ("operator", "operator-1")],
)
def test_client_with_rogue_ca_certificate_fails_handshake(
    grpc_create_channel: Callable[..., grpc.Channel],
    rogue_pki: Pki,
    pki: Pki,
    role: str,
    principal: str,
) -> None:
    assert rogue_pki.trust_domain == pki.trust_domain
    assert rogue_pki.ca != pki.ca
    with grpc_create_channel(role, principal, ca=rogue_pki) as ch:
        stub = signer_pb2_grpc.SignerStub(ch)
        err = refused(
            lambda: stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT)
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(err) is None


def test_rogue_planner_cannot_open_a_session(
    grpc_create_channel: Callable[..., grpc.Channel], rogue_pki: Pki
) -> None:
    with grpc_create_channel("planner", "planner-1", ca=rogue_pki) as ch:
        stub = sessions_pb2_grpc.SessionsStub(ch)
        err = refused(
            lambda: stub.OpenSession(
                open_request("agent-1", "10.00", task=TASK, ttl=600), timeout=CALL_TIMEOUT
            )
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(err) is None


def test_real_certificate_still_works_after_refused_handshakes(
    grpc_addr: str, grpc_create_channel: Callable[..., grpc.Channel], pki: Pki, rogue_pki: Pki
) -> None:
    with grpc_create_channel("agent", "agent-2", ca=rogue_pki) as ch:
        err = refused(
            lambda: signer_pb2_grpc.SignerStub(ch).GetPublicKeys(
                signer_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT
            )
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    with grpc_create_channel("agent", "agent-2") as ch:
        keys = signer_pb2_grpc.SignerStub(ch).GetPublicKeys(
            signer_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT
        )
    assert {k.key_id for k in keys.keys} == {"payments.v1", "payments.v2"}


# -- 3. identity parsing -------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert_pem(
    sans: list[x509.GeneralName] | None, common_name: str = "paywarden test client"
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(_KEY, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _uri(text: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(text)


def _principal(pem: bytes) -> Principal:
    return principal_from_auth_context({"x509_pem_cert": [pem]}, TRUST_DOMAIN)


def _assert_no_identity(fn: Callable[[], object]) -> None:
    with pytest.raises(NotAuthenticated) as info:
        fn()
    assert info.value.reason is Reason.NO_IDENTITY
    assert to_grpc_status(info.value).code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("role", list(Role), ids=str)
def test_parse_spiffe_accepts_each_role(role: Role) -> None:
    uri = f"spiffe://{TRUST_DOMAIN}/{role}/{role}-7"
    assert parse_spiffe(uri, TRUST_DOMAIN) == Principal(role, f"{role}-7")


@pytest.mark.parametrize("principal_id", ["a", "agent-1", "agent_7.prod", "x" * 128])
def test_parse_spiffe_accepts_well_formed_ids(principal_id: str) -> None:
    got = parse_spiffe(f"spiffe://{TRUST_DOMAIN}/agent/{principal_id}", TRUST_DOMAIN)
    assert got == Principal(Role.AGENT, principal_id)


BAD_URIS = {
    # not our trust domain
    "other-domain": "spiffe://evil.test/agent/agent-1",
    "domain-suffix": "spiffe://paywarden.test.evil/agent/agent-1",
    "domain-longer": "spiffe://paywarden.testx/agent/agent-1",
    "domain-case": "spiffe://PAYWARDEN.TEST/agent/agent-1",
    "domain-port": "spiffe://paywarden.test:443/agent/agent-1",
    "domain-userinfo": "spiffe://agent@paywarden.test/agent/agent-1",
    "other-scheme": "https://paywarden.test/agent/agent-1",
    # role
    "role-admin": "spiffe://paywarden.test/admin/agent-1",
    "role-case": "spiffe://paywarden.test/Agent/agent-1",
    "role-empty": "spiffe://paywarden.test//agent-1",
    # path segments
    "too-many-segments": "spiffe://paywarden.test/agent/agent-1/extra",
    "trailing-slash": "spiffe://paywarden.test/agent/agent-1/",
    "too-few-segments": "spiffe://paywarden.test/agent",
    "no-path": "spiffe://paywarden.test/",
    "dot-segments": "spiffe://paywarden.test/planner/../agent/agent-1",
    # malformed principal id
    "id-empty": "spiffe://paywarden.test/agent/",
    "id-leading-dash": "spiffe://paywarden.test/agent/-agent-1",
    "id-leading-dot": "spiffe://paywarden.test/agent/.agent",
    "id-space": "spiffe://paywarden.test/agent/agent 1",
    "id-percent": "spiffe://paywarden.test/agent/agent%2D1",
    "id-query": "spiffe://paywarden.test/agent/agent-1?role=planner",
    "id-fragment": "spiffe://paywarden.test/agent/agent-1#x",
    "id-too-long": "spiffe://paywarden.test/agent/" + "x" * 129,
    "id-non-ascii": "spiffe://paywarden.test/agent/agént-1",
    "id-trailing-newline": "spiffe://paywarden.test/agent/agent-1\n",
}


@pytest.mark.parametrize("uri", list(BAD_URIS.values()), ids=list(BAD_URIS))
def test_parse_spiffe_refuses(uri: str) -> None:
    _assert_no_identity(lambda: parse_spiffe(uri, TRUST_DOMAIN))


# cryptography only builds URI SANs of ASCII characters.
ASCII_BAD_URIS = {k: v for k, v in BAD_URIS.items() if v.isascii()}


@pytest.mark.parametrize("uri", list(ASCII_BAD_URIS.values()), ids=list(ASCII_BAD_URIS))
def test_certificate_with_bad_uri_san_is_refused(uri: str) -> None:
    pem = _cert_pem([_uri(uri)])
    _assert_no_identity(lambda: _principal(pem))


def test_certificate_with_good_uri_san_is_accepted() -> None:
    pem = _cert_pem([_uri("spiffe://paywarden.test/approver/approver-1")])
    assert _principal(pem) == Principal(Role.APPROVER, "approver-1")


BAD_CERTS: dict[str, Callable[[], list[x509.GeneralName] | None]] = {
    "no-san": lambda: None,
    "dns-san-only": lambda: [x509.DNSName("agent-1.paywarden.test")],
    "non-spiffe-uri-only": lambda: [_uri("https://paywarden.test/agent/agent-1")],
    "two-spiffe-uris": lambda: [
        _uri("spiffe://paywarden.test/agent/agent-1"),
        _uri("spiffe://paywarden.test/planner/planner-1"),
    ],
    "same-spiffe-uri-twice": lambda: [
        _uri("spiffe://paywarden.test/agent/agent-1"),
        _uri("spiffe://paywarden.test/agent/agent-1"),
    ],
    "ours-and-another-domain": lambda: [
        _uri("spiffe://paywarden.test/agent/agent-1"),
        _uri("spiffe://evil.test/planner/planner-1"),
    ],
    # X.509-SVID rule: exactly one URI SAN of any scheme or case
    "ours-and-uppercase-scheme": lambda: [
        _uri("SPIFFE://paywarden.test/planner/planner-1"),
        _uri("spiffe://paywarden.test/agent/agent-1"),
    ],
    "ours-and-https": lambda: [
        _uri("spiffe://paywarden.test/agent/agent-1"),
        _uri("https://paywarden.test/planner/planner-1"),
    ],
}


@pytest.mark.parametrize("sans", list(BAD_CERTS.values()), ids=list(BAD_CERTS))
def test_certificate_without_exactly_one_usable_spiffe_id_is_refused(
    sans: Callable[[], list[x509.GeneralName] | None],
) -> None:
    pem = _cert_pem(sans())
    _assert_no_identity(lambda: _principal(pem))


@pytest.mark.parametrize(
    "auth_context",
    [{}, {"x509_pem_cert": []}, {"transport_security_type": [b"ssl"]}],
    ids=["empty", "no-cert", "tls-without-cert"],
)
def test_auth_context_without_certificate_is_refused(auth_context: dict[str, Any]) -> None:
    _assert_no_identity(lambda: principal_from_auth_context(auth_context, TRUST_DOMAIN))


def test_auth_context_with_two_certificates_is_refused() -> None:
    a = _cert_pem([_uri("spiffe://paywarden.test/agent/agent-1")])
    b = _cert_pem([_uri("spiffe://paywarden.test/agent/agent-2")])
    _assert_no_identity(
        lambda: principal_from_auth_context({"x509_pem_cert": [a, b]}, TRUST_DOMAIN)
    )


def test_auth_context_with_garbage_certificate_is_refused() -> None:
    _assert_no_identity(
        lambda: principal_from_auth_context({"x509_pem_cert": [b"not a cert"]}, TRUST_DOMAIN)
    )


def test_common_name_is_never_used() -> None:
    pem = _cert_pem(
        [_uri("spiffe://paywarden.test/planner/planner-1")], common_name="agent/agent-1"
    )
    assert _principal(pem) == Principal(Role.PLANNER, "planner-1")
    pem = _cert_pem(
        [_uri("spiffe://paywarden.test/planner/planner-1")],
        common_name="spiffe://paywarden.test/agent/agent-1",
    )
    assert _principal(pem) == Principal(Role.PLANNER, "planner-1")


def test_common_name_is_no_fallback_when_san_is_missing() -> None:
    for cn in ("agent/agent-1", "spiffe://paywarden.test/agent/agent-1"):
        pem = _cert_pem(None, common_name=cn)
        _assert_no_identity(lambda pem=pem: _principal(pem))  # type: ignore[misc]


def test_issued_test_certificates_name_their_principal(pki: Pki) -> None:
    for role, principal in PRINCIPAL_OF.items():
        _, pem = pki.cert(role.value, principal)
        assert _principal(pem) == Principal(role, principal)


def test_the_authenticator_reads_each_certificate_once_and_never_confuses_two(
    pki: Pki,
) -> None:
    auth = Authenticator.from_pem(pki.trust_domain, pki.ca)
    _, agent = pki.cert("agent", "agent-1")
    _, planner = pki.cert("planner", "planner-1")
    for _ in range(3):  # the second and third answers come from what the first read
        assert auth.principal({"x509_pem_cert": [agent]}) == Principal(Role.AGENT, "agent-1")
        assert auth.principal({"x509_pem_cert": [planner]}) == Principal(Role.PLANNER, "planner-1")
    assert set(auth._known) == {agent, planner}
    # a refusal is never kept: refused again, and nothing remembered for it
    rogue = _cert_pem([_uri(f"spiffe://{TRUST_DOMAIN}/agent/agent-1")])
    for _ in range(2):
        with pytest.raises(NotAuthenticated) as refused_again:
            auth.principal({"x509_pem_cert": [rogue]})
        assert refused_again.value.reason is Reason.CLIENT_CERT_PROFILE
    assert rogue not in auth._known


def test_the_authenticator_refuses_a_certificate_past_its_end_on_every_call(pki: Pki) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    auth = Authenticator.from_pem(pki.trust_domain, pki.ca, clock=lambda: now[0])
    _, agent = pki.cert("agent", "agent-1")
    end = x509.load_pem_x509_certificate(agent).not_valid_after_utc.timestamp()
    assert auth.principal({"x509_pem_cert": [agent]}) == Principal(Role.AGENT, "agent-1")
    now[0] = end  # notAfter itself is still inside the validity period (RFC 5280)
    assert auth.principal({"x509_pem_cert": [agent]}) == Principal(Role.AGENT, "agent-1")
    now[0] = end + 1  # the connection that carries this certificate outlived it
    for _ in range(2):  # what was read for the certificate does not let it through
        with pytest.raises(NotAuthenticated) as info:
            auth.principal({"x509_pem_cert": [agent]})
        assert info.value.reason is Reason.CLIENT_CERT_EXPIRED
        assert to_grpc_status(info.value).code == grpc.StatusCode.UNAUTHENTICATED


# -- 4. session visibility over gRPC -------------------------------------------


def test_planner_opens_session_for_agent(
    api: Api, session: sessions_pb2.Session, stack: Stack
) -> None:
    assert SESSION_ID.match(session.session_id)
    assert session.agent_id == "agent-1"
    assert session.planner_id == "planner-1"  # from the certificate, not the request
    assert session.state == "open"
    assert session.task_digest == hashlib.sha256(TASK.encode()).hexdigest()
    assert session.expires_at - session.created_at == 600
    assert abs(session.created_at - stack.clock.now()) < 60
    assert [(s.asset, s.budget, s.spent) for s in session.spend] == [("USD", "10.00", "0.00")]
    assert list(session.allowed_payees) == []


def test_owning_planner_and_agent_see_the_session(api: Api, session: sessions_pb2.Session) -> None:
    for role, principal in (("planner", "planner-1"), ("agent", "agent-1")):
        got = get_session(api.sessions(role, principal), session.session_id, timeout=CALL_TIMEOUT)
        assert got.session_id == session.session_id
        assert got.state == "open"
        assert got.agent_id == "agent-1"
        assert got.planner_id == "planner-1"
        assert [(s.asset, s.budget, s.spent) for s in got.spend] == [("USD", "10.00", "0.00")]


def test_other_planner_cannot_get_session(api: Api, session: sessions_pb2.Session) -> None:
    stub = api.sessions("planner", "planner-2")
    err = refused(
        lambda: stub.GetSession(
            sessions_pb2.GetSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.SESSION_PLANNER_MISMATCH)
    assert session.session_id not in (err.details() or "")
    # planner-2 still works, on its own session.
    own = opened_session(api.planner2, "agent-1", "10.00", task=TASK, ttl=600, timeout=CALL_TIMEOUT)
    assert (
        get_session(
            api.sessions("planner", "planner-2"), own.session_id, timeout=CALL_TIMEOUT
        ).planner_id
        == "planner-2"
    )


def test_other_planner_cannot_close_session(api: Api, session: sessions_pb2.Session) -> None:
    stub = api.sessions("planner", "planner-2")
    err = refused(
        lambda: stub.CloseSession(
            sessions_pb2.CloseSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.SESSION_PLANNER_MISMATCH)
    assert (
        get_session(
            api.sessions("agent", "agent-1"), session.session_id, timeout=CALL_TIMEOUT
        ).state
        == "open"
    )


def test_other_agent_cannot_get_session(api: Api, session: sessions_pb2.Session) -> None:
    stub = api.sessions("agent", "agent-2")
    err = refused(
        lambda: stub.GetSession(
            sessions_pb2.GetSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.SESSION_AGENT_MISMATCH)
    # agent-2 still works.
    keys = api.signer_as("agent", "agent-2").GetPublicKeys(
        signer_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT
    )
    assert len(keys.keys) == 2


@pytest.mark.parametrize(
    ("role", "principal"), [("approver", "approver-1"), ("operator", "operator-1")]
)
def test_approver_and_operator_cannot_read_a_real_session(
    api: Api, session: sessions_pb2.Session, role: str, principal: str
) -> None:
    stub = api.sessions(role, principal)
    err = refused(
        lambda: stub.GetSession(
            sessions_pb2.GetSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)


@pytest.mark.parametrize(("role", "principal"), [("agent", "agent-1"), ("planner", "planner-1")])
def test_unknown_session_is_not_found(
    api: Api, session: sessions_pb2.Session, role: str, principal: str
) -> None:
    stub = api.sessions(role, principal)
    err = refused(
        lambda: stub.GetSession(
            sessions_pb2.GetSessionRequest(session_id=UNKNOWN_SESSION), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND)
    assert (
        get_session(api.sessions(role, principal), session.session_id, timeout=CALL_TIMEOUT).state
        == "open"
    )


def test_closing_unknown_session_is_not_found(api: Api, session: sessions_pb2.Session) -> None:
    stub = api.sessions("planner", "planner-1")
    err = refused(
        lambda: stub.CloseSession(
            sessions_pb2.CloseSessionRequest(session_id=UNKNOWN_SESSION), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND)
    assert (
        get_session(
            api.sessions("planner", "planner-1"), session.session_id, timeout=CALL_TIMEOUT
        ).state
        == "open"
    )


MALFORMED_SESSION_IDS = {
    "short": "ses_abc",
    "no-prefix": "A" * 47,
    "wrong-prefix": "sess" + "A" * 43,
    "one-too-long": "ses_" + "A" * 44,
    "bad-char": "ses_" + "A" * 42 + "!",
    "padding": "ses_" + "A" * 42 + "=",
    "sql": "ses_' OR '1'='1",
    "trailing-newline": "ses_" + "A" * 43 + "\n",
}


@pytest.mark.parametrize(
    "session_id", list(MALFORMED_SESSION_IDS.values()), ids=list(MALFORMED_SESSION_IDS)
)
@pytest.mark.parametrize(("role", "principal"), [("agent", "agent-1"), ("planner", "planner-1")])
def test_malformed_session_id_is_invalid(
    api: Api, session: sessions_pb2.Session, session_id: str, role: str, principal: str
) -> None:
    stub = api.sessions(role, principal)
    err = refused(
        lambda: stub.GetSession(
            sessions_pb2.GetSessionRequest(session_id=session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.INVALID_ARGUMENT, Reason.SESSION_ID_MALFORMED)
    assert (
        get_session(api.sessions(role, principal), session.session_id, timeout=CALL_TIMEOUT).state
        == "open"
    )


def test_open_session_with_unknown_asset_is_invalid(api: Api) -> None:
    stub = api.sessions("planner", "planner-1")
    err = refused(
        lambda: stub.OpenSession(
            open_request("agent-1", "10.00", asset="XYZ", task=TASK, ttl=600), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.INVALID_ARGUMENT, Reason.UNKNOWN_ASSET)
    ok = stub.OpenSession(
        open_request("agent-1", "10.00", task=TASK, ttl=600), timeout=CALL_TIMEOUT
    ).session
    assert ok.state == "open"
    assert [(s.asset, s.budget) for s in ok.spend] == [("USD", "10.00")]


@pytest.mark.parametrize(
    "agent_id",
    ["agent-1\n", "-agent", "agent 1", "x" * 129],
    ids=["newline", "dash", "space", "long"],
)
def test_open_session_for_malformed_agent_id_is_invalid(api: Api, agent_id: str) -> None:
    stub = api.sessions("planner", "planner-1")
    err = refused(
        lambda: stub.OpenSession(
            open_request(agent_id, "10.00", task=TASK, ttl=600), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.INVALID_ARGUMENT, Reason.STRING_INVALID)
    assert (
        stub.OpenSession(
            open_request("agent-1", "10.00", task=TASK, ttl=600), timeout=CALL_TIMEOUT
        ).session.state
        == "open"
    )


def test_planner_closes_its_session_and_agent_sees_it_closed(api: Api) -> None:
    opened = opened_session(
        api.planner, "agent-1", "10.00", task=TASK, ttl=600, timeout=CALL_TIMEOUT
    )
    closed = (
        api.sessions("planner", "planner-1")
        .CloseSession(
            sessions_pb2.CloseSessionRequest(session_id=opened.session_id), timeout=CALL_TIMEOUT
        )
        .session
    )
    assert closed.session_id == opened.session_id
    assert closed.state == "closed"
    assert (
        get_session(api.sessions("agent", "agent-1"), opened.session_id, timeout=CALL_TIMEOUT).state
        == "closed"
    )


# -- 5. what an agent must never do --------------------------------------------


def test_agent_cannot_open_a_session_even_for_itself(api: Api) -> None:
    stub = api.sessions("agent", "agent-1")
    err = refused(
        lambda: stub.OpenSession(
            open_request("agent-1", "10.00", task=TASK, ttl=600), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)


def test_agent_cannot_close_its_own_session(api: Api, session: sessions_pb2.Session) -> None:
    stub = api.sessions("agent", "agent-1")
    err = refused(
        lambda: stub.CloseSession(
            sessions_pb2.CloseSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)
    assert (
        get_session(
            api.sessions("agent", "agent-1"), session.session_id, timeout=CALL_TIMEOUT
        ).state
        == "open"
    )


def test_agent_cannot_sign_in_another_agents_session(api: Api, stack: Stack) -> None:
    opened = opened_session(
        api.planner, "agent-1", "10.00", task=TASK, ttl=600, timeout=CALL_TIMEOUT
    )  # for agent-1
    err = refused(
        lambda: api.signer_as("agent", "agent-2").Sign(
            authz_request(stack, opened.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.SESSION_AGENT_MISMATCH)
    got = get_session(api.sessions("agent", "agent-1"), opened.session_id, timeout=CALL_TIMEOUT)
    assert [(s.budget, s.spent) for s in got.spend] == [("10.00", "0.00")]
    # The owner signs in it afterwards, and only its own payment is counted.
    resp = api.signer_as("agent", "agent-1").Sign(
        authz_request(stack, opened.session_id), timeout=CALL_TIMEOUT
    )
    assert resp.jws.count(".") == 2
    got = get_session(api.sessions("agent", "agent-1"), opened.session_id, timeout=CALL_TIMEOUT)
    assert [(s.budget, s.spent) for s in got.spend] == [("10.00", "1.00")]


@pytest.mark.parametrize(
    ("role", "principal"),
    [("planner", "planner-1"), ("approver", "approver-1"), ("operator", "operator-1")],
)
def test_only_agents_sign_even_with_a_valid_intent(
    api: Api, session: sessions_pb2.Session, stack: Stack, role: str, principal: str
) -> None:
    err = refused(
        lambda: api.signer_as(role, principal).Sign(
            authz_request(stack, session.session_id), timeout=CALL_TIMEOUT
        )
    )
    assert_status(err, grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)
    got = get_session(api.sessions("agent", "agent-1"), session.session_id, timeout=CALL_TIMEOUT)
    assert [(s.budget, s.spent) for s in got.spend] == [("10.00", "0.00")]
