"""The SDK's x402 side without a signer: reading a 402's offers (x402 version 2's header,
version 1's body), refusing what it cannot send, taking a signed answer only when the
authorisation is the request's (in the shape of its version), and the steps of
``sign_x402`` (the same bytes on every retry, only UNAVAILABLE / DEADLINE_EXCEEDED
retried).

The real signer cannot be made to answer a wrong authorisation on demand, so the answers
here are constructed: one that matches its request, then the same with one thing changed,
each of which must be :class:`UnexpectedAnswer`. The 402 answers are written with the x402
SDK's own schema and header encoder.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from paywarden.client import (
    X_PAYMENT_HEADER,
    ClientError,
    PreparedX402,
    RequirementsRefused,
    RetryPolicy,
    SignRefused,
    TransportFailed,
    UnexpectedAnswer,
    X402Pending,
    X402Requirements,
    X402Signed,
    offers,
)
from paywarden.client._signing import Pause, Send
from paywarden.client.errors import Refusal
from paywarden.client.x402 import prepare_x402, x402_steps
from paywarden.client.x402_answers import read_x402_answer
from paywarden.v1 import signer_pb2
from x402.http.utils import encode_payment_required_header
from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentRequiredV1, PaymentRequirementsV1

TOKEN = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
MERCHANT = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"
PAYER = "0x1111111111111111111111111111111111111111"
ACCEPTED: dict[str, Any] = {
    "scheme": "exact",
    "network": "eip155:8453",
    "asset": TOKEN,
    "amount": "1250000",
    "payTo": MERCHANT,
    "maxTimeoutSeconds": 60,
    "extra": {"name": "USD Coin", "version": "2"},
}
V1_ACCEPTED: dict[str, Any] = {  # version 1's entry for the same payment
    "scheme": "exact",
    "network": "base",
    "maxAmountRequired": "1250000",
    "resource": "http://127.0.0.1:9/weather",
    "description": "the weather",
    "mimeType": "application/json",
    "outputSchema": None,
    "payTo": MERCHANT,
    "maxTimeoutSeconds": 60,
    "asset": TOKEN,
    "extra": {"name": "USD Coin", "version": "2"},
}
EXPIRES_AT = 1_900_000_120
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, approval_poll=0.01)


def prepared_order(**order: Any) -> PreparedX402:
    """What ``sign_x402`` would send for ACCEPTED, expiring at EXPIRES_AT."""
    base: dict[str, Any] = {"key_id": "x402-pay", "reference": "order-9", "expires_at": EXPIRES_AT}
    return prepare_x402("ses-1", dict(ACCEPTED), {**base, **order})  # type: ignore[typeddict-item]


def signed_document(prepared: PreparedX402) -> dict[str, Any]:
    """The PaymentPayload a signer writes for ``prepared``."""
    r = prepared.request.requirements
    return {
        "x402Version": 2,
        "accepted": {
            "scheme": r.scheme, "network": r.network, "asset": r.asset, "amount": r.amount,
            "payTo": r.pay_to, "maxTimeoutSeconds": r.max_timeout_seconds,
            "extra": {"name": r.extra_name, "version": r.extra_version},
        },
        "payload": {
            "authorization": {
                "from": PAYER, "to": r.pay_to, "value": r.amount,
                "validAfter": str(EXPIRES_AT - 200), "validBefore": str(EXPIRES_AT - 60),
                "nonce": "0x" + "ab" * 32,
            },
            "signature": "0x" + "1c" * 65,
        },
    }  # fmt: skip


def x402_answer(
    document: dict[str, Any], *, header: str | None = None
) -> signer_pb2.SignX402Response:
    text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    return signer_pb2.SignX402Response(
        status=signer_pb2.SIGNED,
        x_payment=header if header is not None else base64.b64encode(text.encode()).decode(),
        payment_payload_json=text,
        decision_id="dec_1",
        key_id="x402-pay.v1",
        from_address=PAYER,
        audit_seq=7,
    )


# -- offers ----------------------------------------------------------------------------------


def test_offers_read_the_402_as_the_x402_sdk_writes_it() -> None:
    required = PaymentRequired(
        resource=ResourceInfo(url="http://127.0.0.1:9/weather"),
        accepts=[PaymentRequirements.model_validate(ACCEPTED)],
    )
    header = encode_payment_required_header(required)
    assert offers(header) == [
        X402Requirements(
            scheme="exact", network="eip155:8453", asset=TOKEN, pay_to=MERCHANT,
            amount="1250000", max_timeout_seconds=60, resource="http://127.0.0.1:9/weather",
            extra_name="USD Coin", extra_version="2",
            extra_json='{"name":"USD Coin","version":"2"}',
        )
    ]  # fmt: skip
    assert offers(json.loads(base64.b64decode(header))) == offers(header)


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in ACCEPTED.items() if k != key}


@pytest.mark.parametrize(
    "accepted",
    [
        pytest.param({**ACCEPTED, "maxAmountRequired": "1"}, id="v1-and-v2-amounts"),
        pytest.param({**ACCEPTED, "description": "weather"}, id="v1-key-in-v2"),
        pytest.param(_without("payTo"), id="no-payTo"),
        pytest.param({**ACCEPTED, "maxTimeoutSeconds": "60"}, id="timeout-text"),
        pytest.param({**ACCEPTED, "maxTimeoutSeconds": True}, id="timeout-bool"),
        pytest.param({**ACCEPTED, "amount": 1250000}, id="amount-number"),
        pytest.param({**ACCEPTED, "resource": {"url": "http://shop"}}, id="resource-object"),
        pytest.param({**ACCEPTED, "extra": ["USD Coin"]}, id="extra-list"),
        pytest.param({**ACCEPTED, "extra": {"assetTransferMethod": "permit2"}}, id="permit2"),
    ],
)
def test_requirements_it_cannot_send_as_given_are_refused(accepted: dict[str, Any]) -> None:
    with pytest.raises(RequirementsRefused) as refused:
        prepare_x402("ses-1", accepted, {"key_id": "x402-pay", "reference": "r"})
    assert isinstance(refused.value, ClientError)


@pytest.mark.parametrize(
    "header",
    [
        "not base64!",
        base64.b64encode(json.dumps({"x402Version": 1, "accepts": [ACCEPTED]}).encode()).decode(),
        base64.b64encode(json.dumps({"x402Version": 2, "accepts": ACCEPTED}).encode()).decode(),
        json.dumps({"x402Version": 2, "accepts": [V1_ACCEPTED]}),
        json.dumps({"x402Version": 3, "accepts": [ACCEPTED]}),
        json.dumps({"x402Version": True, "accepts": [V1_ACCEPTED]}),
        '{"x402Version": 1, "accepts": [',
    ],
    ids=[
        "not-base64", "v1-answer-v2-entry", "accepts-not-a-list", "v2-answer-v1-entry",
        "version-3", "version-true", "body-not-json",
    ],
)  # fmt: skip
def test_a_payment_required_it_cannot_read_is_refused(header: str) -> None:
    with pytest.raises(RequirementsRefused):
        offers(header)


def test_offers_read_a_v1_402_body_as_the_x402_sdk_writes_it() -> None:
    required = PaymentRequiredV1(
        error="X-PAYMENT header is required",
        accepts=[PaymentRequirementsV1.model_validate(V1_ACCEPTED)],
    )
    body = required.model_dump_json()
    v1 = X402Requirements(
        scheme="exact", network="base", asset=TOKEN, pay_to=MERCHANT, amount="1250000",
        max_timeout_seconds=60, resource="http://127.0.0.1:9/weather", extra_name="USD Coin",
        extra_version="2", extra_json='{"name":"USD Coin","version":"2"}', x402_version=1,
    )  # fmt: skip
    assert offers(body) == offers(body.encode()) == offers(json.loads(body)) == [v1]
    assert offers(base64.b64encode(body.encode())) == [v1]  # also as a header value
    # An entry alone is read by its amount's name, or as the version it is said to be.
    assert X402Requirements.from_dict(V1_ACCEPTED) == v1
    assert prepare_x402("ses-1", V1_ACCEPTED, {"key_id": "k", "reference": "r"}).request
    with pytest.raises(RequirementsRefused, match="v2"):
        X402Requirements.from_dict(V1_ACCEPTED, x402_version=2)
    with pytest.raises(RequirementsRefused, match="version 3"):
        X402Requirements.from_dict(ACCEPTED, x402_version=3)


def _v1_without(key: str) -> dict[str, Any]:
    return {k: v for k, v in V1_ACCEPTED.items() if k != key}


@pytest.mark.parametrize(
    "accepted",
    [
        pytest.param(_v1_without("resource"), id="no-resource"),
        pytest.param(_v1_without("asset"), id="no-asset"),
        pytest.param({**V1_ACCEPTED, "maxAmountRequired": 1250000}, id="amount-number"),
        pytest.param({**V1_ACCEPTED, "description": 7}, id="description-number"),
        pytest.param({**V1_ACCEPTED, "mimeType": ["application/json"]}, id="mime-list"),
        pytest.param({**V1_ACCEPTED, "outputSchema": "{}"}, id="schema-text"),
        pytest.param({**V1_ACCEPTED, "extra": '{"name":"USD Coin"}'}, id="extra-text"),
        pytest.param({**V1_ACCEPTED, "accepted": {}}, id="unknown-key"),
    ],
)
def test_v1_requirements_it_cannot_send_as_given_are_refused(accepted: dict[str, Any]) -> None:
    with pytest.raises(RequirementsRefused):
        prepare_x402("ses-1", accepted, {"key_id": "x402-pay", "reference": "r"})


def test_a_request_is_built_once_with_a_fresh_32_byte_nonce() -> None:
    first, second = prepared_order(), prepared_order()
    assert first.request.nonce != second.request.nonce
    assert len(base64.urlsafe_b64decode(first.request.nonce + "=")) == 32
    assert first.request.requirements.pay_to == MERCHANT
    assert PreparedX402.from_bytes(first.to_bytes()).request == first.request
    given = prepared_order(nonce="bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2U", resource="http://shop/x")
    assert given.request.nonce == "bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2U"
    assert given.request.requirements.resource == "http://shop/x"
    named = prepare_x402(
        "ses-1", {**ACCEPTED, "resource": "http://shop/y"}, {"key_id": "k", "reference": "r"}
    )
    assert named.request.requirements.resource == "http://shop/y"


# -- answers -----------------------------------------------------------------------------------


def test_the_matching_answer_is_an_authorisation() -> None:
    prepared = prepared_order(from_address=PAYER.lower())
    paid = read_x402_answer(x402_answer(signed_document(prepared)), prepared, 1, None)
    assert isinstance(paid, X402Signed)
    assert (paid.authorization.to, paid.authorization.value) == (MERCHANT, 1_250_000)
    assert paid.headers == {"PAYMENT-SIGNATURE": paid.x_payment}
    assert json.loads(base64.b64decode(paid.x_payment)) == paid.payment_payload


def signed_v1_document(prepared: PreparedX402) -> dict[str, Any]:
    """The version 1 PaymentPayload a signer writes for ``prepared``: scheme and network at
    the top, no ``accepted``."""
    document = signed_document(prepared)
    del document["accepted"]
    r = prepared.request.requirements
    return {**document, "x402Version": 1, "scheme": r.scheme, "network": r.network}


def test_a_matching_v1_answer_is_an_authorisation_sent_as_x_payment() -> None:
    prepared = prepare_x402(
        "ses-1", V1_ACCEPTED, {"key_id": "x402-pay", "reference": "r", "expires_at": EXPIRES_AT}
    )
    assert prepared.request.requirements.x402_version == 1
    paid = read_x402_answer(x402_answer(signed_v1_document(prepared)), prepared, 1, None)
    assert isinstance(paid, X402Signed) and paid.x402_version == 1
    assert paid.headers == {X_PAYMENT_HEADER: paid.x_payment} == {"X-PAYMENT": paid.x_payment}
    assert (paid.authorization.to, paid.authorization.value) == (MERCHANT, 1_250_000)
    for change in [
        _changed_at("network", "eip155:8453"),
        _changed_at("network", "base-sepolia"),
        _changed_at("scheme", "upto"),
        _changed_at("x402Version", 2),
        _changed_at("x402Version", True),
        _changed_at("accepted", {}),  # version 2's member in a version 1 payload
        _changed_at("payload.authorization.to", OTHER),
        _changed_at("payload.authorization.value", "1250001"),
    ]:
        document = signed_v1_document(prepared)
        change(document)
        with pytest.raises(UnexpectedAnswer):
            read_x402_answer(x402_answer(document), prepared, 1, None)
    # A version 2 payload answering version 1 requirements is refused, and the reverse.
    with pytest.raises(UnexpectedAnswer, match="shape"):
        read_x402_answer(x402_answer(signed_document(prepared)), prepared, 1, None)
    v2 = prepared_order()
    with pytest.raises(UnexpectedAnswer, match="accepted"):
        read_x402_answer(x402_answer(signed_v1_document(v2) | {"x402Version": 2}), v2, 1, None)


def _changed_at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            document = document[key]
        document[last] = value

    return change


OTHER = "0x2222222222222222222222222222222222222222"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_changed_at("payload.authorization.to", OTHER), id="to"),
        pytest.param(_changed_at("accepted.payTo", OTHER), id="payTo"),
        pytest.param(_changed_at("payload.authorization.value", "1250001"), id="value"),
        pytest.param(_changed_at("payload.authorization.value", "1250000.0"), id="value-decimal"),
        pytest.param(_changed_at("accepted.amount", "1"), id="amount"),
        pytest.param(_changed_at("accepted.asset", OTHER), id="asset"),
        pytest.param(_changed_at("accepted.network", "eip155:1"), id="network"),
        pytest.param(_changed_at("accepted.scheme", "upto"), id="scheme"),
        pytest.param(
            _changed_at("accepted.extra", {"name": "USD Coin", "version": "1"}), id="domain"
        ),
        pytest.param(_changed_at("payload.authorization.from", OTHER), id="from"),
        pytest.param(
            _changed_at("payload.authorization.validBefore", str(EXPIRES_AT + 1)), id="window"
        ),
        pytest.param(_changed_at("payload.authorization.nonce", "0x1234"), id="nonce"),
        pytest.param(_changed_at("payload.signature", "0x" + "1c" * 64), id="signature"),
        pytest.param(_changed_at("x402Version", 1), id="version"),
        pytest.param(_changed_at("payload", None), id="no-payload"),
    ],
)
def test_an_authorisation_that_is_not_the_requests_is_refused(
    change: Callable[[dict[str, Any]], None],
) -> None:
    prepared = prepared_order()
    document = signed_document(prepared)
    change(document)
    with pytest.raises(UnexpectedAnswer):
        read_x402_answer(x402_answer(document), prepared, 1, None)


def test_an_authorisation_from_another_key_or_header_is_refused() -> None:
    prepared = prepared_order(from_address=OTHER)  # the caller knows its key's address
    with pytest.raises(UnexpectedAnswer, match="from"):
        read_x402_answer(x402_answer(signed_document(prepared)), prepared, 1, None)
    prepared = prepared_order()
    wrong = base64.b64encode(b'{"x402Version":2}').decode()
    with pytest.raises(UnexpectedAnswer, match="header"):
        read_x402_answer(x402_answer(signed_document(prepared), header=wrong), prepared, 1, None)
    answer = x402_answer(signed_document(prepared))
    answer.key_id = "payments.v1"
    with pytest.raises(UnexpectedAnswer, match="key"):
        read_x402_answer(answer, prepared, 1, None)


# -- steps -------------------------------------------------------------------------------------


def test_only_unavailable_is_retried_with_the_same_bytes() -> None:
    prepared = prepared_order()
    steps = x402_steps(
        prepared, FAST, wait_for_approval=None, fetch_receipts=False, receipt_timeout=1
    )
    first = next(steps)
    assert isinstance(first, Send) and first.method.path == "/paywarden.v1.Signer/SignX402"
    sent = first.request.SerializeToString()
    assert isinstance(steps.send(Refusal(grpc.StatusCode.UNAVAILABLE, "down")), Pause)
    again = steps.send(None)
    assert isinstance(again, Send) and again.request.SerializeToString() == sent
    with pytest.raises(StopIteration) as done:
        steps.send(x402_answer(signed_document(prepared)))
    paid = done.value.value
    assert isinstance(paid, X402Signed) and paid.attempts == 2


def test_a_refusal_is_final_and_a_foreign_status_leaves_the_outcome_unknown() -> None:
    prepared = prepared_order()
    denied = Refusal(
        grpc.StatusCode.PERMISSION_DENIED, "[PAYEE_NOT_ALLOWED] no", "PAYEE_NOT_ALLOWED",
        "dec_2", 9, "paywarden.dev",
    )  # fmt: skip
    steps = x402_steps(
        prepared, FAST, wait_for_approval=None, fetch_receipts=False, receipt_timeout=1
    )
    next(steps)
    with pytest.raises(SignRefused) as refused:
        steps.send(denied)
    assert (refused.value.reason, refused.value.decision_id) == ("PAYEE_NOT_ALLOWED", "dec_2")
    steps = x402_steps(
        prepared, FAST, wait_for_approval=None, fetch_receipts=False, receipt_timeout=1
    )
    next(steps)
    with pytest.raises(TransportFailed) as unknown:
        steps.send(Refusal(grpc.StatusCode.INTERNAL, "proxy said 500"))
    assert isinstance(unknown.value.request, PreparedX402)
    assert unknown.value.request.request == prepared.request


def test_a_pending_answer_is_asked_again_with_the_same_request() -> None:
    prepared = prepared_order()
    steps = x402_steps(
        prepared, FAST, wait_for_approval=30, fetch_receipts=False, receipt_timeout=1
    )
    sent = next(steps)
    assert isinstance(sent, Send)
    held = signer_pb2.SignX402Response(
        status=signer_pb2.PENDING_APPROVAL, approval_id="apr_1", audit_seq=3
    )
    assert isinstance(steps.send(held), Pause)
    again = steps.send(None)
    assert isinstance(again, Send) and again.request == sent.request
    with pytest.raises(StopIteration) as done:
        steps.send(x402_answer(signed_document(prepared)))
    paid = done.value.value
    assert isinstance(paid, X402Signed) and paid.approval_id == "apr_1"
    pending = read_x402_answer(held, prepared, 1, None)
    assert isinstance(pending, X402Pending) and pending.request.approval_id == "apr_1"
