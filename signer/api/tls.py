"""The server's TLS files: read and checked at start, read again when they change.

``server.tls_cert``, ``server.tls_key`` and ``server.client_ca`` are read before the
signer serves; an unreadable or inconsistent file stops start-up with a
:class:`~paywarden.signer.api.startup.StartupError` naming its setting. While it
serves, gRPC asks :meth:`ServerTls.fetch` before every new TLS handshake; when
any of the three files has changed since it was last read (its size, times or
inode), the files are read and checked again, and a consistent set replaces the
one in use for the connections that follow: connections already open are not
dropped. The client CAs that the authenticator holds client certificates to
change with the ones the handshake trusts, and the authenticator looks at the
files (a ``stat``) before every call too: a call on a connection opened under a
CA since taken out of the bundle is refused (``UNAUTHENTICATED``,
``CLIENT_CERT_PROFILE``) without waiting for a new handshake. A set that
fails a check (a key that does not match its certificate, say, while a renewal
is half written) is not used: the files in use stay, a warning names the
setting at fault once, and the next handshake looks again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paywarden.signer.api.watched import WatchedFiles
from paywarden.signer.config import ServerConfig
from paywarden.signer.errors import Forbidden, Reason
from paywarden.signer.identity import Authenticator, Principal, RevocationCheck, serial_hex

log = logging.getLogger("paywarden.signer.api.tls")


class TlsFilesError(Exception):
    """A TLS file cannot be used; the message names its setting."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    serial: int  # of the server certificate, for the log


def read_file(path: os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise TlsFilesError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_tls_files(s: ServerConfig) -> TlsFiles:
    """The three files, each parsed so that an error names its setting."""
    key_pem = read_file(s.tls_key, "server.tls_key")
    cert_pem = read_file(s.tls_cert, "server.tls_cert")
    ca_pem = read_file(s.client_ca, "server.client_ca")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TlsFilesError(f"server.tls_cert: {s.tls_cert} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsFilesError(f"server.tls_key: {s.tls_key} is not an unencrypted PEM key") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsFilesError(f"server.client_ca: {s.client_ca} holds no PEM certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise TlsFilesError("server.tls_key: the key does not match server.tls_cert")
    return TlsFiles(key_pem, cert_pem, ca_pem, cert.serial_number)


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(files.key_pem, files.cert_pem)], root_certificates=files.ca_pem
    )


class ServerTls:
    """Mutual-TLS server credentials that follow the files (see the module's text)."""

    def __init__(self, server: ServerConfig, auth: Authenticator | None = None) -> None:
        self._server = server
        self._auth = auth
        self._files = WatchedFiles(
            (server.tls_key, server.tls_cert, server.client_ca),
            lambda _in_use: read_tls_files(server),
            errors=(TlsFilesError, ValueError),
            log=log,
            refused="the server's TLS files changed but the ones in use stay",
            changed=self._changed,
        )
        self._served = self._files.value  # what gRPC was last given
        if auth is not None:  # every call looks too: a CA taken out stops open connections
            auth.follow(self._files.current)

    def credentials(self) -> grpc.ServerCredentials:
        # gRPC documents None from the fetcher as "no change"; its stubs leave None out.
        fetcher = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._served), fetcher, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration, or None to keep it."""
        try:
            files = self._files.current()
        except Exception:  # never fail a handshake for the reload's sake: keep what is in use
            log.exception("reading the server's TLS files again failed; the ones in use stay")
            return None
        if files is self._served:
            return None
        self._served = files
        return _configuration(files)

    def _changed(self, old: TlsFiles, new: TlsFiles) -> None:
        if self._auth is not None and new.ca_pem != old.ca_pem:
            self._auth.trust(new.ca_pem)
        log.info(
            "the server's TLS files changed: now serving certificate serial %x (%s), client CAs %s",
            new.serial,
            self._server.tls_cert,
            self._server.client_ca,
        )


@dataclass(frozen=True, slots=True)
class _Crl:
    serials: frozenset[str]
    this_update: dt.datetime
    number: int | None  # the CRL number extension, when the CRL has one

    @classmethod
    def of(cls, crl: x509.CertificateRevocationList) -> _Crl:
        try:
            number: int | None = crl.extensions.get_extension_for_class(
                x509.CRLNumber
            ).value.crl_number
        except x509.ExtensionNotFound:
            number = None
        serials = frozenset(serial_hex(entry.serial_number) for entry in crl)
        return cls(serials, crl.last_update_utc, number)


class RevocationList:
    """``server.crl_file``: the certificate serials a CRL the security team publishes lists.

    Read at start (an unusable file stops start-up) and again whenever the file changes,
    checked on every call by a ``stat``. The CRL must be signed by one of the client CAs
    in use. A changed file that fails that check, or cannot be parsed, is not used: the
    serials already read stay revoked and one warning names the file. So is a CRL older
    than the one in use (an earlier ``thisUpdate``, or a lower CRL number), however
    validly signed: an old list would lift later revocations. A CRL past its
    ``nextUpdate`` is still honoured, with one warning: it lists fewer revocations than
    a fresh one, never more."""

    def __init__(self, server: ServerConfig, path: os.PathLike[str]) -> None:
        self._server = server
        self._path = path
        self._crl = WatchedFiles(
            (path,),
            self._read,
            errors=(TlsFilesError, ValueError),
            log=log,
            refused="server.crl_file changed but the list in use stays",
            changed=lambda _old, _new: log.info("server.crl_file %s read again", self._path),
        )

    def _read(self, in_use: _Crl | None) -> _Crl:
        data = read_file(self._path, "server.crl_file")
        try:
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_crl(data)
            )
        except ValueError:
            raise TlsFilesError(f"server.crl_file: {self._path} is not a CRL") from None
        cas = x509.load_pem_x509_certificates(read_file(self._server.client_ca, "server.client_ca"))
        if not any(_signed_by(crl, ca) for ca in cas):
            raise TlsFilesError(
                f"server.crl_file: {self._path} is not signed by a CA of server.client_ca"
            )
        read = _Crl.of(crl)
        if in_use is not None:
            self._not_older(read, in_use)
        next_update = crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.now(dt.UTC):
            log.warning("server.crl_file %s is past its nextUpdate (%s)", self._path, next_update)
        return read

    def _not_older(self, read: _Crl, in_use: _Crl) -> None:
        if read.this_update < in_use.this_update:
            raise TlsFilesError(
                f"server.crl_file: {self._path} is older (thisUpdate {read.this_update}) than"
                f" the CRL in use ({in_use.this_update})"
            )
        if read.number is not None and in_use.number is not None and read.number < in_use.number:
            raise TlsFilesError(
                f"server.crl_file: {self._path} has a lower CRL number ({read.number}) than"
                f" the CRL in use ({in_use.number})"
            )

    def revoked(self, serial: str) -> bool:
        """Whether the CRL in use lists this serial (lower-case hex, as revocations name it)."""
        return serial in self._crl.current().serials


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def with_crl(check: RevocationCheck, crl: RevocationList | None) -> RevocationCheck:
    """``check``, and before it a refusal of every certificate the CRL lists."""
    if crl is None:
        return check

    def checked(principal: Principal, serial: str) -> None:
        if crl.revoked(serial):
            raise Forbidden(Reason.IDENTITY_REVOKED, "the client certificate is revoked (CRL)")
        check(principal, serial)

    return checked
