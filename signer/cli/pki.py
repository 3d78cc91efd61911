"""Development PKI: a CA, the server certificate and role client certificates.

    paywarden-pki init-ca  --dir DIR [--trust-domain paywarden.local]
    paywarden-pki server   --dir DIR [--host 127.0.0.1] [--dns localhost]
    paywarden-pki issue    --dir DIR --role agent --id agent-7 [--hours 24]
    paywarden-pki renew    --dir DIR --role agent --id agent-7 [--hours 24] [--if-within H]

``scripts/pki.py`` runs the same commands. Client certificates carry exactly one
URI SAN, spiffe://<trust-domain>/<role>/<id>, which is what the signer authorises
on. This is what a security team runs for development and tests; production uses
its own CA. Private keys are written with mode 0600, and every file is replaced
whole (written aside, then renamed), so that a reader never sees half of one.
Idempotent: an existing CA or certificate is kept (use --force to reissue a leaf
certificate). Client certificates are short-lived (24 hours unless --hours says
otherwise): ``renew`` gives an identity that has one a new key and certificate,
with a new serial, for the same SPIFFE id; with --if-within H only when the
current one ends within H hours (for a script that runs at every start).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paywarden.signer.cli.pipes import quiet_on_broken_pipe
from paywarden.signer.identity import PRINCIPAL_ID

ROLES = ("agent", "planner", "approver", "operator", "payee")


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Writes ``data`` beside ``path`` and renames it over ``path`` (readers see all or none)."""
    aside = path.with_name(f".{path.name}.new")
    aside.unlink(missing_ok=True)  # one left by a crash keeps its mode: never write into it
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(aside, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _replace(path, data, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _replace(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


class PkiError(Exception):
    """A command cannot go on: ``main`` prints the message and exits 1."""


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"no CA in {d}; run init-ca first") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an EC key")
    return cert, key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(d: Path, trust_domain: str, days: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.crt").exists():
        print(f"CA in {d}: already exists, nothing done")
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"Paywarden dev CA ({trust_domain})")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .sign(key, hashes.SHA256())
    )
    _write_key(d / "ca.key", key)
    _write_cert(d / "ca.crt", cert)
    (d / "trust-domain").write_text(trust_domain + "\n", encoding="ascii")
    print(f"CA in {d}: created")


def _leaf(
    d: Path,
    stem: str,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    lifetime: dt.timedelta,
    force: bool,
) -> None:
    if (d / f"{stem}.crt").exists() and not force:
        print(f"{stem}: already exists, nothing done")
        return
    ca_cert, ca_key = _load_ca(d)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(d / f"{stem}.key", key)
    _write_cert(d / f"{stem}.crt", cert)
    print(f"{stem}: issued, valid until {cert.not_valid_after_utc.isoformat()}")


@quiet_on_broken_pipe
def main(argv: list[str] | None = None, *, prog: str = "paywarden-pki") -> int:
    """Runs one command; ``prog`` names the command in usage and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init-ca")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--trust-domain", default="paywarden.local")
    p.add_argument("--days", type=int, default=365)
    p = sub.add_parser("server")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--host", action="append", default=None, help="IP SAN (default 127.0.0.1)")
    p.add_argument("--dns", action="append", default=None, help="DNS SAN (default localhost)")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--force", action="store_true")
    issue, renew = sub.add_parser("issue"), sub.add_parser("renew")
    for p in (issue, renew):
        p.add_argument("--dir", type=Path, required=True)
        p.add_argument("--role", choices=ROLES, required=True)
        p.add_argument("--id", required=True)
        p.add_argument("--hours", type=_hours, default=24, help="lifetime (24)")
    issue.add_argument("--force", action="store_true")
    renew.add_argument("--if-within", type=_hours, metavar="HOURS", help="only if it ends sooner")
    args = parser.parse_args(argv)
    try:
        return _run(args, prog)
    except PkiError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, prog: str) -> int:
    if args.command == "init-ca":
        init_ca(args.dir, args.trust_domain, args.days)
    elif args.command == "server":
        hosts = args.host or ["127.0.0.1"]
        dns = args.dns or ["localhost"]
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
        _leaf(
            args.dir,
            "server",
            "paywarden server",
            sans,
            ExtendedKeyUsageOID.SERVER_AUTH,
            dt.timedelta(days=args.days),
            args.force,
        )
    else:
        # The id names the files written (DIR/<role>-<id>.crt) and the identity
        # the signer reads back: the signer's own rule keeps both safe.
        if not PRINCIPAL_ID.fullmatch(args.id):
            print(
                f"{prog}: --id {args.id!r} is not a principal id: 1-128 characters of"
                " lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
                file=sys.stderr,
            )
            return 2
        stem = f"{args.role}-{args.id}"
        force = args.command == "renew" or args.force
        if args.command == "renew" and not _due(args.dir / f"{stem}.crt", args.if_within):
            return 0
        domain = (args.dir / "trust-domain").read_text(encoding="ascii").strip()
        uri = f"spiffe://{domain}/{args.role}/{args.id}"
        _leaf(
            args.dir,
            stem,
            f"{args.role} {args.id}",
            [x509.UniformResourceIdentifier(uri)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            dt.timedelta(hours=args.hours),
            force,
        )
    return 0


def _hours(text: str) -> float:
    """A positive number of hours, at most ten years."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < hours <= 87_600:
        raise argparse.ArgumentTypeError(f"{text!r}: hours must be above 0 and at most 87600")
    return hours


def _due(path: Path, within: float | None) -> bool:
    """Whether the certificate at ``path`` (which must exist) is to be renewed now."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path.name}: no certificate to renew; issue one first") from None
    except ValueError:
        raise PkiError(f"{path.name}: not a PEM certificate") from None
    ends = cert.not_valid_after_utc
    if within is not None and ends - _now() > dt.timedelta(hours=within):
        print(f"{path.stem}: valid until {ends.isoformat()}, nothing done")
        return False
    return True
