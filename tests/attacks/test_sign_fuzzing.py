"""Fuzzing ``Signer.Sign`` over a real ``paywarden serve`` with hypothesis.

Generated requests, from nearly valid to garbage (random and huge strings, unicode,
huge and malformed amounts and times, reused nonces, other agents' and closed
sessions, raw bytes with unknown fields, wrong wire types and invalid UTF-8), are sent
by agent-1 over mutual TLS. Every answer must be OK or a documented refusal with a
reason code; the server must keep serving (health answers, a valid payment still
signs); and nothing may be signed that a reference model denies. The model is the
API's documented contract (proto/paywarden/v1/signer.proto, README) applied to the
open test pack and the sessions' budgets: a payment may be signed only for the
caller's open session, a configured payment key and asset of that session, a plain
positive amount within the asset's decimals and what is left of the budget, a payee
and reference of documented length without control characters (and an ASCII payee
unless the pack names it: a pattern admits ASCII payees only, issue 8, item 6), a
well-formed nonce never used for another request, and an expiry in the allowed window.

``PAYWARDEN_FUZZ_EXAMPLES`` (default 150) sets the number of examples of each test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import time
import tomllib
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.helpers import (
    OPEN_PACK,
    Pki,
    ServeProcess,
    TestToken,
    new_nonce,
    reason_of,
    trailing_metadata,
    write_config,
)
from tests.support.clients import running_api
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

EXAMPLES = int(os.environ.get("PAYWARDEN_FUZZ_EXAMPLES", "150"))
RPC_TIMEOUT = 30.0
# The sessions the fuzzer signs in: an hour long, opened by the agent's own planner.
fuzz_session = partial(open_session, task="fuzzing", ttl=3600, timeout=RPC_TIMEOUT)
MAX_EXPIRY = 300  # limits.max_expiry_seconds in tests.helpers.write_config
DECIMALS = {"USD": 2, "BTC": 8, "JPY": 0}
KEYS = ("payments.v1", "payments.v2")
# Every status a Sign may answer with (README "Call it"; signer/api/status.py). INTERNAL,
# UNKNOWN or a transport error is a failure; UNAVAILABLE is for HSM and store faults,
# and none is injected here.
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Payees the open test pack names exactly; every other payee only its pattern admits.
NAMED_PAYEES = set(tomllib.loads(OPEN_PACK)["payees"].get("allow", []))
_REASON = re.compile(r"[A-Z][A-Z0-9_]{1,63}")
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the reference model ---------------------------------------------------------------


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _minor(amount: str, asset: str) -> int | None:
    """The amount in minor units if it is a documented plain amount, else None."""
    match = _AMOUNT.fullmatch(amount)
    if match is None or asset not in DECIMALS or len(match.group(2) or "") > DECIMALS[asset]:
        return None
    frac = (match.group(2) or "").ljust(DECIMALS[asset], "0")
    return int(match.group(1)) * 10 ** DECIMALS[asset] + (int(frac) if frac else 0)


def _clean(text: str, longest: int) -> bool:
    norm = _nfc(text)
    return 1 <= len(norm) <= longest and not any(
        unicodedata.category(c) in ("Cc", "Cf") for c in norm
    )


def _nonce_ok(nonce: str) -> bool:
    if not _B64URL.fullmatch(nonce) or len(nonce) % 4 == 1:
        return False
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    return 16 <= len(raw) <= 64 and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == nonce


@dataclass
class Model:
    """What may be signed: the documented contract, and the state it depends on."""

    budgets: dict[str, dict[str, int]]  # agent-1's open sessions: asset -> minor units
    spent: dict[str, dict[str, int]] = field(default_factory=dict)
    used: dict[str, tuple[Any, str | None]] = field(default_factory=dict)  # nonce -> key, jws
    nonces: list[str] = field(default_factory=list)  # every nonce sent, to reuse

    @staticmethod
    def key(i: signer_pb2.PaymentIntent) -> tuple[Any, ...]:
        """What makes two requests "the same request" (normalised forms)."""
        minor = _minor(i.amount, i.asset)
        return (
            i.session_id, i.key_id, _nfc(i.payee), minor, i.asset, _nfc(i.reference),
            _nfc(i.purpose), i.nonce, i.expires_at,
        )  # fmt: skip

    def why_not(self, i: signer_pb2.PaymentIntent, sent: float, answered: float) -> str | None:
        """Why the model denies signing ``i`` as a new payment (None: it may be signed)."""
        budget = self.budgets.get(i.session_id)
        if budget is None:
            return "not an open session of the caller"
        if i.key_id not in KEYS:
            return "not a payment key"
        if i.asset not in budget:
            return "asset not in the session"
        minor = _minor(i.amount, i.asset)
        if minor is None or minor <= 0:
            return "not a plain positive amount with the asset's decimals"
        if self.spent.get(i.session_id, {}).get(i.asset, 0) + minor > budget[i.asset]:
            return "over the session's budget"
        if not _clean(i.payee, 256) or not _clean(i.reference, 128):
            return "payee or reference not as documented"
        if not _nfc(i.payee).isascii() and _nfc(i.payee) not in NAMED_PAYEES:
            # the open pack's pattern admits ASCII payees only (issue 8, item 6)
            return "a payee admitted by a pattern must be ASCII"
        if len(_nfc(i.purpose)) > 1024:
            return "purpose too long"
        if not _nonce_ok(i.nonce):
            return "malformed nonce"
        if not int(sent) - 1 < i.expires_at <= int(answered) + MAX_EXPIRY + 1:
            return "expiry outside the window"
        return None

    def signed(self, i: signer_pb2.PaymentIntent, token: str) -> None:
        """The server signed ``i``: the state every later answer is judged on."""
        per = self.spent.setdefault(i.session_id, {})
        per[i.asset] = per.get(i.asset, 0) + (_minor(i.amount, i.asset) or 0)
        self.used[i.nonce] = (self.key(i), token)


# -- the server ------------------------------------------------------------------------


@dataclass
class Target:
    srv: ServeProcess
    channel: grpc.Channel
    stub: signer_pb2_grpc.SignerStub
    raw: grpc.UnaryUnaryMultiCallable[Any, Any]
    model: Model
    keys: KeySet
    fuzzed: list[str]  # agent-1's sessions the fuzzer spends (small budgets, run out)
    roomy: str  # agent-1's session for the raw bytes and the checks afterwards
    other_agents: str  # agent-2's session
    closed: str
    db: Path
    pki: Pki
    stats: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[Target]:
    config = write_config(tmp_path_factory.mktemp("fuzz"), token, pki)
    # Hundreds of refusals from one agent are the point here, not a flood to throttle:
    # with the default refusal budget the fuzzer would stop reaching the signing path.
    env = {"PAYWARDEN_LIMITS__REFUSAL_BURST": "1000000"}
    with running_api(config, pki, env=env) as (srv, api):
        big = {"USD": "1000.00", "BTC": "0.5", "JPY": "5000"}
        budgets = {fuzz_session(api.planner, "agent-1", big): big}
        small = {"USD": "3.00"}
        budgets[fuzz_session(api.planner, "agent-1", small)] = small
        fuzzed = list(budgets)
        roomy = fuzz_session(api.planner, "agent-1", {"USD": "1000.00"})
        budgets[roomy] = {"USD": "1000.00"}
        closed = fuzz_session(api.planner, "agent-1", small)
        with pki.channel(srv.addr, "planner", "planner-1") as ch:
            sessions_pb2_grpc.SessionsStub(ch).CloseSession(
                sessions_pb2.CloseSessionRequest(session_id=closed), timeout=RPC_TIMEOUT
            )
        other = fuzz_session(api.planner2, "agent-2", small)
        model = Model(
            {
                sid: {a: _minor(v, a) or 0 for a, v in assets.items()}
                for sid, assets in budgets.items()
            }
        )
        with pki.channel(srv.addr, "agent", "agent-1") as ch:
            stub = signer_pb2_grpc.SignerStub(ch)
            jwks = stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=RPC_TIMEOUT)
            raw = ch.unary_unary(
                "/paywarden.v1.Signer/Sign", request_serializer=None, response_deserializer=None
            )
            yield Target(
                srv, ch, stub, raw, model, KeySet.import_key_set(json.loads(jwks.jwks_json)),
                fuzzed, roomy, other, closed, config.parent / "state.db", pki,
            )  # fmt: skip


def _still_serving(t: Target) -> None:
    """No crash: the process runs, health answers SERVING, a valid payment signs; and
    every signature the store holds is one the model counted."""
    srv, pki = t.srv, t.pki
    assert srv.proc.poll() is None, "".join(srv.output[-30:])
    with pki.channel(srv.addr, "operator", "operator-1") as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    intent = payment_intent(
        t.roomy, payee="after-fuzzing", amount="0.01", reference="ok",
        expires_at=int(time.time()) + 60,
    )  # fmt: skip
    sent = time.time()
    resp = t.stub.Sign(signer_pb2.SignRequest(intent=intent), timeout=RPC_TIMEOUT)
    _check_signed(t, intent, resp, sent, time.time())
    conn = sqlite3.connect(f"file:{t.db}?mode=ro", uri=True)
    try:
        stored = dict(conn.execute("SELECT nonce, jws FROM decisions WHERE jws IS NOT NULL"))
    finally:
        conn.close()
    assert stored == {n: j for n, (_key, j) in t.model.used.items() if j is not None}


def _refusal(err: grpc.RpcError, what: str) -> str:
    code, reason = err.code(), reason_of(err)
    assert code in DOCUMENTED, f"{what}: undocumented status {code} {err.details()!r}"
    assert reason is not None and _REASON.fullmatch(reason), f"{what}: reason {reason!r}"
    return reason


# -- generated requests ----------------------------------------------------------------

_text = st.text(max_size=40)
_huge = st.integers(min_value=100, max_value=5000).map(lambda n: "9" * n)
_ascii = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
)
# Look-alikes and normalisation traps: long s, ff ligature, Cyrillic a, U+2010 hyphen,
# a decomposed e-acute, leading space, right-to-left override, Arabic-Indic one.
_TRAPS = ["\u017fhop.example.com", "\ufb00.example", "\u0430pi.cdn.example"]
_TRAPS += ["bad\u2010x.cdn.example", "e\u0301clair", " lead", "a\u202eb", "\u0661"]
_TRAPS += ["caf\u00e9", "cafe\u0301"]  # a named non-ASCII payee, and its decomposed spelling

# Each field: what a well-behaved client sends, and what an attacker or a bug sends.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "session": st.sampled_from(["open"]),
    "key_id": st.sampled_from(KEYS),
    "payee": st.one_of(st.sampled_from(["weather-data-inc", "shop.example.com"]), _ascii),
    "amount": st.integers(min_value=1, max_value=250),  # minor units, written per asset
    "asset": st.sampled_from(["USD", "USD", "BTC", "JPY"]),
    "reference": st.one_of(st.just("inv-1"), _ascii),
    "purpose": st.one_of(st.just(""), st.text(max_size=50)),
    "nonce": st.just(("fresh", "")),
    "expiry": st.tuples(st.just("rel"), st.integers(min_value=5, max_value=MAX_EXPIRY - 5)),
}
WILD: dict[str, st.SearchStrategy[Any]] = {
    "session": st.sampled_from(["other", "closed", "junk"]),
    "key_id": st.one_of(st.sampled_from(["audit.v1", "payments.v3", "PAYMENTS.V1", ""]), _text),
    "payee": st.one_of(
        st.sampled_from(_TRAPS),
        st.text(min_size=1, max_size=300),
        st.integers(min_value=250, max_value=3000).map(lambda n: "p" * n),
        st.just(""),
    ),
    "amount": st.one_of(
        st.integers(min_value=1, max_value=3).map(str),
        st.from_regex(r"\A(0|[1-9][0-9]{0,3})(\.[0-9]{1,9})?\Z"),
        st.sampled_from(["0", "0.00", "-1", "+1", "1e2", "1.", ".5", "01", " 1", "NaN"]),
        st.sampled_from(["1,00", "Infinity", "1\u00a0000", "0x10", "1_000", "\u0661"]),
        st.integers(min_value=1, max_value=10**40).map(str),
        _huge,
        _text,
    ),
    "asset": st.one_of(st.sampled_from(["EUR", "usd", "", "USD "]), _text),
    "reference": st.one_of(st.just(""), st.text(max_size=200), st.sampled_from(_TRAPS)),
    "purpose": st.one_of(st.text(max_size=200), st.just("x" * 1100)),
    "nonce": st.one_of(
        st.tuples(st.just("reuse"), st.integers(min_value=0, max_value=10**6).map(str)),
        st.tuples(
            st.just("given"),
            st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()),
        ),
        st.tuples(st.just("given"), _text),
    ),
    "expiry": st.one_of(
        st.tuples(st.just("rel"), st.integers(min_value=-60, max_value=3 * MAX_EXPIRY)),
        st.tuples(st.just("abs"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        st.tuples(st.just("abs"), st.sampled_from([0, -1, 2**53 - 1, 2**53, 2**63 - 1])),
    ),
}


@st.composite
def intents(draw: st.DrawFn, only: frozenset[str] | None = None) -> dict[str, Any]:
    """A valid request with none, a few or all of its fields (or of ``only``) replaced
    by wild values."""
    if only is not None:
        wild = draw(st.frozensets(st.sampled_from(sorted(only)), min_size=1))
    else:
        wild = draw(
            st.one_of(
                st.just(frozenset()),
                st.sampled_from(sorted(VALID)).map(lambda name: frozenset({name})),
                st.frozensets(st.sampled_from(sorted(VALID)), min_size=2, max_size=3),
                st.just(frozenset(VALID)),
            )
        )
    spec = {name: draw(WILD[name] if name in wild else VALID[name]) for name in sorted(VALID)}
    if "amount" not in wild:  # a plain amount in the asset's own decimals
        places = DECIMALS.get(spec["asset"], 2)
        whole, frac = divmod(spec["amount"], 10**places)
        spec["amount"] = f"{whole}.{frac:0{places}d}" if places else str(whole)
    spec["junk_session"] = draw(st.one_of(_text, st.just("ses_" + "A" * 43)))
    spec["session_index"] = draw(st.integers(min_value=0, max_value=1))
    return spec


def _build(spec: dict[str, Any], t: Target) -> signer_pb2.PaymentIntent:
    session = {
        "open": t.fuzzed[spec["session_index"] % len(t.fuzzed)],
        "other": t.other_agents,
        "closed": t.closed,
        "junk": spec["junk_session"],
    }[spec["session"]]
    kind, value = spec["nonce"]
    if kind == "fresh":
        nonce = new_nonce()
    elif kind == "reuse":
        nonce = t.model.nonces[int(value) % len(t.model.nonces)] if t.model.nonces else ""
    else:
        nonce = value
    how, when = spec["expiry"]
    expires_at = int(time.time()) + when if how == "rel" else when
    return signer_pb2.PaymentIntent(
        session_id=session, key_id=spec["key_id"], payee=spec["payee"], amount=spec["amount"],
        asset=spec["asset"], reference=spec["reference"], purpose=spec["purpose"], nonce=nonce,
        expires_at=expires_at,
    )  # fmt: skip


def _check_signed(
    t: Target, i: signer_pb2.PaymentIntent, resp: Any, sent: float, done: float
) -> None:
    assert resp.status == signer_pb2.SIGNED and resp.jws, f"OK without a signature: {resp}"
    earlier = t.model.used.get(i.nonce)
    if earlier is not None:  # the same request again: the same answer, nothing new
        assert earlier[0] == Model.key(i), f"nonce {i.nonce} signed for another request"
        assert resp.replayed_result and resp.jws == earlier[1], "a retry got another JWS"
        return
    why = t.model.why_not(i, sent, done)
    t.model.signed(i, resp.jws)  # the store holds it, whatever the verdict below
    assert why is None, f"signed what the model denies ({why}): {i}"
    token = jws.deserialize_compact(resp.jws, t.keys, algorithms=["ES256"])
    claims = json.loads(token.payload)
    assert token.headers()["kid"] == i.key_id
    assert claims["sub"] == "agent-1" and claims["sid"] == i.session_id
    assert claims["nonce"] == i.nonce and claims["asset"] == i.asset
    assert claims["exp"] == i.expires_at
    assert _minor(claims["amount"], i.asset) == _minor(i.amount, i.asset)
    assert claims["payee"] in (i.payee, _nfc(i.payee)), "signed a payee that was not asked"
    assert claims["ref"] in (i.reference, _nfc(i.reference))


# -- the tests -------------------------------------------------------------------------


def _send(t: Target, spec: dict[str, Any]) -> None:
    intent = _build(spec, t)
    t.model.nonces.append(intent.nonce)
    sent = time.time()
    try:
        resp = t.stub.Sign(signer_pb2.SignRequest(intent=intent), timeout=RPC_TIMEOUT)
    except grpc.RpcError as err:
        reason = _refusal(err, f"Sign({intent})")
        t.stats[reason] += 1
        decision = trailing_metadata(err).get("paywarden-decision-id")
        if decision and intent.nonce not in t.model.used:
            t.model.used[intent.nonce] = (Model.key(intent), None)  # recorded, not signed
        return
    _check_signed(t, intent, resp, sent, time.time())
    t.stats["SIGNED"] += 1


def test_fuzzed_sign_requests_get_documented_answers_and_sign_only_what_the_model_allows(
    target: Target,
) -> None:
    t = target
    t.stats.clear()

    @FUZZ_SETTINGS
    @given(spec=intents())
    def one(spec: dict[str, Any]) -> None:
        _send(t, spec)

    one()
    _still_serving(t)
    # the generator reaches the signing path and many different refusals
    assert t.stats["SIGNED"] >= 1, t.stats
    assert len(t.stats) >= min(8, EXAMPLES // 20), t.stats


def test_fuzzed_unicode_payees_and_references_sign_only_what_the_model_allows(
    target: Target,
) -> None:
    """Everything valid but the free-text fields: unicode, look-alikes, controls, sizes."""
    t = target
    t.stats.clear()

    @FUZZ_SETTINGS
    @given(spec=intents(only=frozenset({"payee", "reference", "purpose"})))
    def one(spec: dict[str, Any]) -> None:
        _send(t, spec)

    one()
    _still_serving(t)
    assert t.stats["SIGNED"] >= 1, t.stats


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(int.from_bytes(payload[:9] or b"\0", "little") & (2**64 - 1))
    if wire == 1:
        return tag + payload[:8].ljust(8, b"\0")
    if wire == 5:
        return tag + payload[:4].ljust(4, b"\0")
    return tag + _varint(len(payload)) + payload  # 2: length-delimited


_INTENT_TYPES = {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 0}


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind, bytes): unknown fields, wrong wire types, bad UTF-8, or random bytes."""
    kind = draw(st.sampled_from(["unknown", "unknown-nested", "wrong-type", "bad-utf8", "random"]))
    if kind == "random":
        return kind, draw(st.binary(max_size=600))
    payload = draw(st.binary(max_size=40))
    extra = b""
    if kind.startswith("unknown"):
        number = draw(st.integers(min_value=10, max_value=2**29 - 1))
        extra = _field(number, draw(st.sampled_from([0, 1, 2, 5])), payload)
    elif kind == "wrong-type":
        number = draw(st.sampled_from(sorted(_INTENT_TYPES)))
        wire = draw(st.sampled_from([w for w in (0, 1, 2, 5) if w != _INTENT_TYPES[number]]))
        extra = _field(number, wire, payload)
    elif kind == "bad-utf8":
        number = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8]))
        extra = _field(number, 2, b"ok\xff\xfe" + payload)
    return kind, extra


def test_fuzzed_raw_sign_bytes_are_refused_with_documented_statuses(target: Target) -> None:
    """Bytes a client library would never send: an otherwise signable request with an
    unknown field, a known field in the wrong wire type or bad UTF-8 is never signed."""
    t = target
    session_id = t.roomy

    @FUZZ_SETTINGS
    @given(case=raw_requests())
    def one(case: tuple[str, bytes]) -> None:
        kind, extra = case
        intent = payment_intent(
            session_id, payee="raw-bytes", amount="0.01", reference="raw",
            expires_at=int(time.time()) + 120,
        ).SerializeToString()  # fmt: skip
        if kind == "random":
            body = extra
        elif kind == "unknown":
            body = _field(1, 2, intent) + extra
        else:  # inside the intent
            body = _field(1, 2, intent + extra)
        try:
            t.raw(body, timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            reason = _refusal(err, f"{kind} {body[:60]!r}")
            if kind != "random":
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, reason)
            t.stats[f"raw {reason}"] += 1
            return
        pytest.fail(f"{kind}: signed raw bytes {body[:80]!r}")

    t.stats.clear()
    one()
    _still_serving(t)
    assert t.stats["raw UNKNOWN_FIELD"] >= 1, t.stats
