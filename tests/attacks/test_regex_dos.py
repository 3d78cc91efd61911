"""Pack patterns that would hang a backtracking matcher (issue 8, defect 5 and 12).

The attack: an operator's pack carries the deny pattern
``([a-z0-9]+-?)*\\.evil\\.example``, which ``policy check`` accepted; an agent's
34-character payee then made the signer backtrack for ever while it held the
store's write lock. Payee patterns now run on RE2 (time linear in the payee),
and what RE2 cannot run (backreferences, lookarounds, inline flags it does not
know, such as ``(?u)``) is refused when the pack is loaded, naming the field.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from paywarden.policy import PackError, load_pack
from paywarden.v1 import (
    control_pb2,
    control_pb2_grpc,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.helpers import Pki, TestToken, reason_of, serve, write_config
from tests.support.cli import policy_check
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

EVIL = r"([a-z0-9]+-?)*\\.evil\\.example"  # as written inside a TOML basic string

PACK = """
id = "cdn"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "10.00"

[payees]
allow_patterns = [".+"]
deny_patterns = ["{deny}"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "100.00" }}
"""

# 34 characters that the pattern's nested repetition splits in 2^33 ways before
# a backtracking matcher can say "no".
SLOW_PAYEE = "a" * 33 + "!"


def _pack(tmp_path: Path, deny: str, name: str = "cdn.toml") -> Path:
    path = tmp_path / name
    path.write_text(PACK.format(deny=deny), encoding="utf-8")
    return path


def test_nested_repetition_deny_pattern_does_not_hang_the_signer(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki, packs={"cdn.toml": PACK.format(deny=EVIL)})
    with serve(config) as server:
        planner = pki.channel(server.addr, "planner", "planner-1")
        agent = pki.channel(server.addr, "agent", "agent-1")
        operator = pki.channel(server.addr, "operator", "operator-1")
        with planner, agent, operator:
            session_id = open_session(
                sessions_pb2_grpc.SessionsStub(planner),
                "agent-1",
                "100.00",
                task="fetch assets",
                timeout=30,
            )
            signer = signer_pb2_grpc.SignerStub(agent)

            def sign(payee: str) -> signer_pb2.SignResponse:
                intent = payment_intent(
                    session_id, payee=payee, amount="1.00", expires_at=int(time.time()) + 120
                )
                # A generous deadline: the old matcher needed hours for this payee.
                resp: signer_pb2.SignResponse = signer.Sign(
                    signer_pb2.SignRequest(intent=intent), timeout=60
                )
                return resp

            assert sign(SLOW_PAYEE).status == signer_pb2.SIGNED
            # The pattern still does its job, on the same server, in the same way.
            with pytest.raises(grpc.RpcError) as info:
                sign("a-b-c.evil.example")
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(info.value) == "PAYEE_DENYLISTED"
            # and the kill switch answers: nothing is left spinning under the lock
            control_pb2_grpc.ControlStub(operator).Freeze(
                control_pb2.FreezeRequest(scope=control_pb2.GLOBAL, reason="regex drill"),
                timeout=30,
            )


@pytest.mark.parametrize(
    ("deny", "what"),
    [
        (r"(a)\\1\\.evil\\.example", "backreference"),
        (r"(?!good)[a-z]+\\.evil\\.example", "negative lookahead"),
        (r"(?<=x)[a-z]+\\.evil\\.example", "lookbehind"),
        (r"(?>[a-z]+)\\.evil\\.example", "atomic group"),
        (r"[a-z]++\\.evil\\.example", "possessive quantifier"),
    ],
)
def test_pattern_re2_cannot_bound_is_refused_by_policy_check(
    tmp_path: Path, deny: str, what: str
) -> None:
    proc = policy_check(_pack(tmp_path, deny))
    assert proc.returncode == 1, (what, proc.stdout)
    assert "field payees.deny_patterns.0" in proc.stderr, proc.stderr
    assert "RE2" in proc.stderr, proc.stderr


def test_inline_unicode_flag_is_refused_at_load_not_at_every_payment(tmp_path: Path) -> None:
    # Was: re.compile accepted "(?u)" at load, and every evaluation then raised
    # (re.ASCII and (?u) conflict), so the pack loaded and failed every payment.
    path = _pack(tmp_path, r"(?u)[a-z]+\\.evil\\.example")
    with pytest.raises(PackError, match=r"field payees\.deny_patterns\.0: .*RE2"):
        load_pack(path)
    proc = policy_check(path)
    assert proc.returncode == 1
    assert "field payees.deny_patterns.0" in proc.stderr, proc.stderr


def test_allow_pattern_field_is_named_too(tmp_path: Path) -> None:
    path = tmp_path / "allow.toml"
    text = PACK.format(deny=r"x").replace(
        'allow_patterns = [".+"]', r'allow_patterns = [".+", "(a)\\1"]'
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PackError, match=r"field payees\.allow_patterns\.1: "):
        load_pack(path)
