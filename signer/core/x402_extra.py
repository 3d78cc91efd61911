"""The ``extra`` object of x402 requirements, as the resource server sent it.

x402's resource servers find the requirements a payment answers by comparing
``PaymentPayload.accepted`` with their own: ``extra`` must hold every member they
declared. The signer therefore echoes the server's ``extra`` (with the configured
EIP-712 name and version), after reading it strictly: a flat JSON object of
strings, safe integers and booleans, each member once, bounded in size, its names
and strings free of control and format characters (as a purpose) and in NFC. Its name
and version must be the configured domain's; a transfer method other than EIP-3009
is refused. The other members are recorded and echoed; none of them decides.
"""

from __future__ import annotations

from paywarden.hsm import Eip712Domain
from paywarden.signer.core.validation import clean_text
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.verify.strict_json import MAX_SAFE_INT, strict_loads

MAX_EXTRA_BYTES = 1024
TRANSFER_METHOD = "eip3009"

Extra = tuple[tuple[str, str | int | bool], ...]  # members in the order sent, hashable


def _malformed(words: str) -> InvalidInput:
    return InvalidInput(Reason.MALFORMED_REQUEST, f"extra_json: {words}")


def _clean(field: str, text: str, *, required: bool) -> None:
    """A name or string of ``extra`` as a purpose is read (no control or format
    character, no outer whitespace), and already in NFC: it is echoed as sent."""
    if clean_text(field, text, max_len=MAX_EXTRA_BYTES, required=required) != text:
        raise InvalidInput(Reason.STRING_INVALID, f"{field} is not in Unicode NFC")


def parse_extra(text: str, extra_name: str, extra_version: str, domain: Eip712Domain) -> Extra:
    """The server's ``extra`` (empty when ``text`` is), checked against the configured
    ``domain`` together with the request's ``extra_name`` and ``extra_version``."""
    members: dict[str, object] = {}
    if text:
        if len(text.encode("utf-8")) > MAX_EXTRA_BYTES:
            raise _malformed(f"longer than {MAX_EXTRA_BYTES} bytes")
        try:
            value = strict_loads(text)
        except (ValueError, RecursionError) as exc:
            raise _malformed(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _malformed("not a JSON object")
        members = value
    checked: dict[str, str | int | bool] = {}
    for key, member in members.items():
        _clean(f"extra_json member name {key!r}", key, required=True)
        if isinstance(member, int) and not isinstance(member, bool):
            if abs(member) > MAX_SAFE_INT:
                raise _malformed(f"{key} is too large")
        elif isinstance(member, str):
            _clean(f"extra_json.{key}", member, required=False)
        elif not isinstance(member, bool):
            raise _malformed(f"{key} is neither a string, an integer nor a boolean")
        checked[key] = member
    for member, given, configured in (
        ("name", extra_name, domain.name),
        ("version", extra_version, domain.version),
    ):
        sent = checked.get(member, "")
        if given not in ("", configured) or sent not in ("", configured):
            raise InvalidInput(
                Reason.X402_DOMAIN_MISMATCH, "extra names another EIP-712 domain than the token's"
            )
    method = checked.get("assetTransferMethod", TRANSFER_METHOD)
    if method != TRANSFER_METHOD:
        raise InvalidInput(
            Reason.X402_UNSUPPORTED, f"extra.assetTransferMethod must be {TRANSFER_METHOD}"
        )
    checked["name"], checked["version"] = domain.name, domain.version
    return tuple(checked.items())
