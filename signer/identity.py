"""Who is calling: the role and id in the client certificate's URI SAN.

``spiffe://<trust-domain>/<role>/<id>``. The TLS handshake already checked the
chain up to the client CA; :class:`Authenticator` then holds the leaf to a
client profile (not a CA, clientAuth, issued directly by the configured CA: a
chain through an intermediate is refused) and reads its SANs (never the common
name), requiring exactly one URI SAN in our trust domain. The handshake checks the
certificate's dates only when the connection opens: every call is held to the
certificate's ``notAfter`` again, so that a connection opened before it ends
serves no call after it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from paywarden.signer.errors import NotAuthenticated, Reason, Unavailable

# Lower case only: ids are compared byte for byte everywhere (sessions, packs,
# approvals), so ``Dev-Agent`` must not exist beside ``dev-agent``.
PRINCIPAL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class Role(StrEnum):
    AGENT = "agent"
    PLANNER = "planner"
    APPROVER = "approver"
    OPERATOR = "operator"
    # Receives payments: may read the public keys and ask after a payment that names it.
    PAYEE = "payee"


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


def _leaf(auth_context: Mapping[str, Any]) -> x509.Certificate:
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise NotAuthenticated(Reason.NO_IDENTITY, "no client certificate")
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        raise NotAuthenticated(Reason.NO_IDENTITY, "the client certificate is malformed") from None


def principal_from_auth_context(auth_context: Mapping[str, Any], trust_domain: str) -> Principal:
    """Reads the caller from gRPC's auth context (``x509_pem_cert``), SANs only."""
    return principal_from_cert(_leaf(auth_context), trust_domain)


def principal_from_cert(cert: x509.Certificate, trust_domain: str) -> Principal:
    try:
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


def _profile_refused(why: str) -> NotAuthenticated:
    return NotAuthenticated(Reason.CLIENT_CERT_PROFILE, f"the client certificate {why}")


def check_client_profile(cert: x509.Certificate, issuers: tuple[x509.Certificate, ...]) -> None:
    """A client leaf: CA:FALSE, EKU clientAuth, signed directly by one of ``issuers``."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise _profile_refused("must carry basicConstraints and extendedKeyUsage") from None
    except ValueError:
        raise _profile_refused("has malformed extensions") from None
    if constraints.ca:
        raise _profile_refused("is a CA certificate (basicConstraints CA:TRUE)")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise _profile_refused("is not for client authentication (EKU clientAuth)")
    for issuer in issuers:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise _profile_refused("is not issued directly by the configured client CA")


RevocationCheck = Callable[[Principal, str], None]
"""Raises unless the principal and the certificate serial (lower-case hex) may call."""


def serial_hex(serial: int) -> str:
    """A certificate serial as revocations name it: lower-case hex, no leading zeros."""
    return format(serial, "x")


@dataclass(frozen=True, slots=True)
class _Known:
    """What a certificate that passed the checks was found to be."""

    principal: Principal
    serial: str  # lower-case hex, as revocations name it
    not_after: float  # the end of its validity (inclusive), POSIX seconds


@dataclass(frozen=True, slots=True)
class _Trust:
    client_cas: tuple[x509.Certificate, ...]
    # Who a certificate (its exact PEM bytes) was found to be, its serial and its end:
    # the answer is a function of the certificate, the CAs and the trust domain alone,
    # so it is read once per certificate, not once per call. Bounded: emptied when full.
    # Refusals are not kept. Revocation and expiry are not functions of the certificate
    # alone: they are asked every time.
    known: dict[bytes, _Known] = field(default_factory=dict)


class Authenticator:
    """Reads the caller of an RPC: the client profile first, then the identity, then
    whether the certificate has ended (by ``clock``, the wall clock in POSIX seconds)
    and whether it is revoked (:meth:`check_revocations`): the last two on every call.

    :meth:`trust` replaces the client CAs (``server.client_ca`` read again): the CAs
    and what was read under them change together, in one assignment."""

    __slots__ = ("_clock", "_follow", "_revoked", "_trust", "trust_domain")

    def __init__(
        self,
        trust_domain: str,
        client_cas: tuple[x509.Certificate, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trust_domain = trust_domain
        self._trust = _Trust(tuple(client_cas))
        self._revoked: RevocationCheck | None = None
        self._follow: Callable[[], object] | None = None
        self._clock = clock

    @classmethod
    def from_pem(
        cls, trust_domain: str, client_ca_pem: bytes, clock: Callable[[], float] = time.time
    ) -> Authenticator:
        return cls(trust_domain, tuple(x509.load_pem_x509_certificates(client_ca_pem)), clock)

    @property
    def client_cas(self) -> tuple[x509.Certificate, ...]:
        return self._trust.client_cas

    @property
    def _known(self) -> dict[bytes, _Known]:
        return self._trust.known

    def trust(self, client_ca_pem: bytes) -> None:
        """Holds client certificates to these CAs from now on (ValueError: no certificate)."""
        self._trust = _Trust(tuple(x509.load_pem_x509_certificates(client_ca_pem)))

    def follow(self, refresh: Callable[[], object]) -> None:
        """From now on ``refresh`` runs first in every call: it calls :meth:`trust` when
        the client CA file changed (set once, at start-up), so that calls on a connection
        already open are held to the CAs in use, not to those of its handshake."""
        self._follow = refresh

    def check_revocations(self, revoked: RevocationCheck) -> None:
        """From now on every call is refused that ``revoked`` refuses (set once, at start-up)."""
        self._revoked = revoked

    def principal(self, auth_context: Mapping[str, Any], *, status_only: bool = False) -> Principal:
        """The caller's principal; ``status_only`` (the health service) is answered even
        while the revocations cannot be read (the store is down): it learns only whether
        the signer serves, which then is NOT_SERVING. Whenever they can be read, a revoked
        identity is refused here too."""
        if self._follow is not None:
            self._follow()
        trust = self._trust  # one view for the whole call, whatever a reload does meanwhile
        pems = auth_context.get("x509_pem_cert") or []
        known = trust.known.get(pems[0]) if len(pems) == 1 else None
        if known is None:
            cert = _leaf(auth_context)
            check_client_profile(cert, trust.client_cas)
            known = _Known(
                principal_from_cert(cert, self.trust_domain),
                serial_hex(cert.serial_number),
                cert.not_valid_after_utc.timestamp(),
            )
            if len(trust.known) >= _KNOWN_CERTIFICATES:
                trust.known.clear()
            trust.known[pems[0]] = known
        if self._clock() > known.not_after:  # the connection outlived its certificate
            ended = dt.datetime.fromtimestamp(known.not_after, dt.UTC).isoformat()
            raise NotAuthenticated(
                Reason.CLIENT_CERT_EXPIRED, f"the client certificate expired at {ended}"
            )
        if self._revoked is not None:
            try:
                self._revoked(known.principal, known.serial)
            except Unavailable:
                if not status_only:
                    raise
        return known.principal


_KNOWN_CERTIFICATES = 4096
