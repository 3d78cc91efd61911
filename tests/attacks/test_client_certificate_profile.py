"""Client certificates are held to a client profile, not just to a chain.

The attack: a leaf with ``CA:TRUE``, and a chain through an intermediate under
the ``pathLen=0`` root, were both accepted as callers. A caller's certificate
must be ``CA:FALSE``, carry EKU clientAuth, and be issued directly by the
configured client CA; anything else is refused at the identity step with
UNAUTHENTICATED and the reason CLIENT_CERT_PROFILE.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from cryptography import x509
from paywarden.signer.errors import Reason
from paywarden.signer.identity import Role, check_client_profile

from tests.attacks.certs import ClientCert, ca_of, client_cert, intermediate, spiffe
from tests.conftest import AGENTS, APPROVERS, OPERATORS, PLANNERS
from tests.helpers import Pki, reason_of
from tests.support.clients import public_keys

TIMEOUT = 10

BAD_PROFILES: dict[str, Callable[[Pki], ClientCert]] = {
    "ca-true-leaf": lambda pki: client_cert(pki, spiffe(pki, "agent", "agent-1"), ca=True),
    "leaf-under-intermediate": lambda pki: client_cert(
        pki, spiffe(pki, "agent", "agent-1"), issuer=intermediate(pki)
    ),
    "no-extended-key-usage": lambda pki: client_cert(
        pki, spiffe(pki, "operator", "operator-1"), usages=()
    ),
}


@pytest.mark.parametrize("make", list(BAD_PROFILES.values()), ids=list(BAD_PROFILES))
def test_certificate_outside_the_client_profile_is_refused(
    grpc_addr: str, grpc_server: grpc.Server, pki: Pki, make: Callable[[Pki], ClientCert]
) -> None:
    # GetPublicKeys is open to every role: only the certificate can be refused.
    with pytest.raises(grpc.RpcError) as info, make(pki).channel(grpc_addr, pki) as ch:
        public_keys(ch, TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == Reason.CLIENT_CERT_PROFILE


def test_a_leaf_built_the_same_way_in_profile_is_accepted(
    grpc_addr: str, grpc_server: grpc.Server, pki: Pki
) -> None:
    cert = client_cert(pki, spiffe(pki, "agent", "agent-1"))
    with cert.channel(grpc_addr, pki) as ch:
        assert len(public_keys(ch, TIMEOUT).keys) == 2


def test_every_certificate_pki_py_issues_is_in_profile(pki: Pki) -> None:
    issuers = (ca_of(pki).cert,)
    for role, ids in (
        (Role.AGENT, AGENTS),
        (Role.PLANNER, PLANNERS),
        (Role.APPROVER, APPROVERS),
        (Role.OPERATOR, OPERATORS),
    ):
        for principal in ids:
            _key, pem = pki.cert(role.value, principal)
            check_client_profile(x509.load_pem_x509_certificate(pem), issuers)
