"""Who is calling: the role and id in the client certificate's URI SAN.

``spiffe://<trust-domain>/<role>/<id>``. The certificate was already checked
against the client CA by the TLS handshake; here we read its SANs (never the
common name) and require exactly one URI SAN in our trust domain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography import x509
from paywarden.signer.errors import NotAuthenticated, Reason

# Lower case only: ids are compared byte for byte everywhere (sessions, packs,
# approvals), so ``Dev-Agent`` must not exist beside ``dev-agent``.
PRINCIPAL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class Role(StrEnum):
    AGENT = "agent"
    PLANNER = "planner"
    APPROVER = "approver"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    id: str

    def __str__(self) -> str:
        return f"{self.role}/{self.id}"


def parse_spiffe(uri: str, trust_domain: str) -> Principal:
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        raise NotAuthenticated(
            Reason.NO_IDENTITY, "the certificate's URI SAN is not in our trust domain"
        )
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2:
        raise NotAuthenticated(
            Reason.NO_IDENTITY, "the URI SAN must be spiffe://<domain>/<role>/<id>"
        )
    role_text, principal_id = parts
    try:
        role = Role(role_text)
    except ValueError:
        raise NotAuthenticated(
            Reason.NO_IDENTITY, f"unknown role {role_text!r} in the certificate"
        ) from None
    if not PRINCIPAL_ID.fullmatch(principal_id):
        raise NotAuthenticated(
            Reason.NO_IDENTITY,
            "the principal id in the certificate is malformed (lower-case letters, digits, . _ -)",
        )
    return Principal(role, principal_id)


def principal_from_auth_context(auth_context: Mapping[str, Any], trust_domain: str) -> Principal:
    """Reads the caller from gRPC's auth context (``x509_pem_cert``)."""
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise NotAuthenticated(Reason.NO_IDENTITY, "no client certificate")
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise NotAuthenticated(Reason.NO_IDENTITY, "the client certificate has no SAN") from None
    # As in SPIFFE X.509-SVIDs: exactly one URI SAN, whatever its scheme, so
    # that no other URI can be read as an identity by another component.
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise NotAuthenticated(
            Reason.NO_IDENTITY, "the client certificate must carry exactly one URI SAN"
        )
    return parse_spiffe(uris[0], trust_domain)
