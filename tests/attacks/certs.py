"""Client certificates scripts/pki.py will not issue, built here for the attack tests.

They are signed with the test CA's own key (``Pki.dir/ca.key``), so that the TLS
handshake accepts them and only the signer's own checks can refuse them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import Pki

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ClientCert:
    key_pem: bytes
    chain_pem: bytes  # the leaf, then any intermediates

    def channel(self, addr: str, pki: Pki) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.ca, private_key=self.key_pem, certificate_chain=self.chain_pem
        )
        return grpc.secure_channel(
            addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ca_of(pki: Pki) -> Issuer:
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issuer(x509.load_pem_x509_certificate(pki.ca), key)


def _builder(
    subject: str,
    issuer: Issuer,
    key: ec.EllipticCurvePrivateKey,
    *,
    expired: bool = False,
    ends: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC) - (dt.timedelta(days=2) if expired else dt.timedelta())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(ends or now + dt.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )


def intermediate(pki: Pki) -> Issuer:
    """A CA under the test root (whose pathLen is 0, so this chain is invalid)."""
    root = ca_of(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("paywarden attack intermediate", root, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Issuer(cert, key)


def client_cert(
    pki: Pki,
    uri: str,
    *,
    ca: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = (CLIENT_AUTH,),
    issuer: Issuer | None = None,
    expired: bool = False,
    ends: dt.datetime | None = None,
) -> ClientCert:
    """A leaf for ``uri`` signed by the test CA (or ``issuer``), shaped as asked
    (``expired``: its validity ended a day ago; ``ends``: its validity ends then)."""
    signer = issuer or ca_of(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(f"attack {uri}", signer, key, expired=expired, ends=ends).add_extension(
        x509.BasicConstraints(ca=ca, path_length=None), critical=True
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    leaf = builder.sign(signer.key, hashes.SHA256())
    chain = _pem(leaf) + (_pem(signer.cert) if issuer is not None else b"")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ClientCert(key_pem, chain)


def spiffe(pki: Pki, role: str, principal: str) -> str:
    return f"spiffe://{pki.trust_domain}/{role}/{principal}"
