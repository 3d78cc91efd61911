"""``paywarden verify JWS --jwks FILE|URL --payee ID``: a payee's offline check of a payment
(:mod:`paywarden.verify`) against the signer's exported JWKS.

Exit 0: the payment is valid for this payee now. Exit 1: rejected, with its reason code
(``rejected: BAD_SIGNATURE: ...``, or ``{"valid": false, "reason": ...}`` with ``--json``).
Exit 2: nothing was checked (a usage error, or the JWS or the JWKS could not be read).

The JWKS comes from a file or a URL: ``https://``, or ``http://`` on a loopback address
only (a key set read in clear from elsewhere could be anyone's); redirects are not
followed, and a document over a mebibyte is refused.

Two JWS strings can carry one payment (an ES256 signature (r, s) has a twin (r, n - s)):
keep payments from being used twice by their decision id (the ``jti``), never by the JWS.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from paywarden.signer.cli.support import CliExit
from paywarden.verify import PaymentRejected, VerifiedPayment, verify_payment
from paywarden.verify.jwks import MAX_LIFETIME

MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT = 10.0
_LOOPBACK_NAMES = ("localhost",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("jws", help="the payment (compact JWS), or - to read it from stdin")
    parser.add_argument(
        "--jwks", required=True, help="the signer's JWKS: a file, or an https:// URL"
    )
    parser.add_argument("--payee", required=True, help="your own payee identifier")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--at", type=int, help="check as of this time (Unix seconds; default: now)")
    parser.add_argument(
        "--max-lifetime",
        type=int,
        help="the longest payment lifetime accepted, in seconds (default: the JWKS's"
        " paywarden_max_lifetime, else 300; it can only lower the published one)",
    )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise urllib.error.URLError("redirects are not followed")


def _loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fetch(url: str) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise CliExit(2, "--jwks: http:// only on a loopback address; use https://")
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT) as response:
            data: bytes = response.read(MAX_JWKS_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CliExit(2, f"--jwks: cannot fetch {url}: {exc}") from None
    return data


def _jwks(source: str) -> bytes:
    if source.startswith(("https://", "http://")):
        data = _fetch(source)
    else:
        try:
            with Path(source).open("rb") as f:
                data = f.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise CliExit(2, f"--jwks: cannot read {source}: {exc.strerror}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise CliExit(2, f"--jwks: more than {MAX_JWKS_BYTES} bytes")
    return data


def _jws(text: str) -> str:
    if text != "-":
        return text
    return sys.stdin.read(MAX_JWKS_BYTES).strip()


def _shown(payment: VerifiedPayment) -> dict[str, Any]:
    fields = asdict(payment)
    fields["key_state"] = str(payment.key_state)
    fields["payload"] = payment.payload.decode("utf-8")
    return fields


def run(args: argparse.Namespace) -> int:
    if not args.payee:
        raise CliExit(2, "--payee: your own payee identifier is required")
    if args.max_lifetime is not None and not 1 <= args.max_lifetime <= MAX_LIFETIME:
        raise CliExit(2, f"--max-lifetime: 1 to {MAX_LIFETIME} seconds")
    jwks = _jwks(args.jwks)
    jws = _jws(args.jws)
    try:
        payment = verify_payment(
            jws, jwks, payee=args.payee, now=args.at, max_lifetime=args.max_lifetime
        )
    except PaymentRejected as exc:
        if args.json:
            verdict = {"valid": False, "reason": str(exc.reason), "detail": exc.detail}
            print(json.dumps(verdict, ensure_ascii=False, sort_keys=True))
        else:
            print(f"rejected: {exc.reason}: {exc.detail}")
        return 1
    if args.json:
        print(json.dumps({"valid": True, "payment": _shown(payment)}, ensure_ascii=False))
    else:
        print(
            f"valid: {payment.amount} {payment.asset} to {payment.payee}"
            f" (decision {payment.decision_id}, key {payment.key_id}, expires"
            f" {payment.expires_at}); ask Signer.CheckPayment whether it was voided since;"
            f" refuse a replay by its decision id, never by the JWS (two JWS strings can"
            f" carry one payment)"
        )
    return 0
