"""docs/x402.md done as it says, on a development layout made as ``scripts/dev.sh`` makes
it (``scripts/dev-provision.sh``: the token ``paywarden-dev``, its PINs, the development
certificates, under ``data/`` of a scratch top directory): its commands run as printed
and in order, its configuration and pack are what a real signer serves, its agent code
pays through that signer, and the x402 SDK (an independent implementation) reads the
402 answer, accepts the header the code makes and verifies the authorisation. The token
it configures is the SDK's own for that network, and its rotation command gives a new
address that pays at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.hsm import evm as evm_math
from paywarden.signer.config import Config
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc
from x402.http import (
    decode_payment_required_header,
    decode_payment_signature_header,
    encode_payment_required_header,
)
from x402.mechanisms.evm.default_assets import DEFAULT_ASSETS
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo

from tests.helpers import ROOT, serve
from tests.support.x402_chain import LocalEip3009Chain

GUIDE = ROOT / "docs" / "x402.md"
DOC_TIMEOUT = 120
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _guide_blocks(lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(GUIDE.read_text("utf-8")) if kind == lang]


def _guide_commands(*words: str) -> list[str]:
    """The guide's shell lines that contain every one of ``words``, in its order."""
    lines = [ln for block in _guide_blocks("sh") for ln in block.splitlines() if ln.strip()]
    return [ln for ln in lines if all(w in ln for w in words)]


def _guide_config() -> Config:
    config_text, _pack = _guide_blocks("toml")
    return Config.model_validate(tomllib.loads(config_text))


@pytest.fixture(scope="module")
def dev_top(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A top directory laid out as the repository after ``scripts/dev.sh``: ``data/``
    provisioned by scripts/dev-provision.sh, ``scripts`` and ``.venv`` the repository's,
    and a ``softhsm.conf`` naming the token directory in ``data/``."""
    top = tmp_path_factory.mktemp("x402-guide")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    made = subprocess.run(
        ["scripts/dev-provision.sh"],
        cwd=ROOT,
        env={**env, "PAYWARDEN_DATA": str(top / "data")},
        capture_output=True,
        text=True,
        timeout=DOC_TIMEOUT,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    (top / "scripts").symlink_to(ROOT / "scripts")
    (top / ".venv").symlink_to(ROOT / ".venv")
    # The signer reads hsm.softhsm_conf from the configuration's directory; the custody
    # script reads the repository's, whose relative token directory is the same one here.
    shutil.copy(top / "data" / "softhsm.conf", top / "softhsm.conf")
    return top


def _as_printed(top: Path, line: str) -> subprocess.CompletedProcess[str]:
    """One of the guide's command lines, run by a shell in ``top``."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return subprocess.run(
        ["bash", "-c", line],
        cwd=top,
        env=env,
        capture_output=True,
        text=True,
        timeout=DOC_TIMEOUT,
        check=False,
    )


def _guide_ran(top: Path, *words: str) -> str:
    (line,) = _guide_commands(*words)
    done = _as_printed(top, line)
    assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
    return done.stdout


def _dev_channel(top: Path, addr: str, role: str, who: str) -> grpc.Channel:
    pki = top / "data" / "pki"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{role}-{who}.key").read_bytes(),
        certificate_chain=(pki / f"{role}-{who}.crt").read_bytes(),
    )
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def _agent_code() -> dict[str, Any]:
    """The functions the guide's agent code defines."""
    (code,) = _guide_blocks("python")
    namespace: dict[str, Any] = {"__name__": "x402_guide"}
    exec(compile(code, str(GUIDE), "exec"), namespace)  # the guide's own code, as printed
    return namespace


def _resource_server_402(pay_to: str) -> str:
    """A 402 answer's PAYMENT-REQUIRED header as the x402 SDK writes it: 0.01 USDC on the
    guide's network, the token and EIP-712 domain the SDK knows for it."""
    config = _guide_config().assets["USDC"].x402
    assert config is not None
    usdc = DEFAULT_ASSETS[config.network][0]
    offer = PaymentRequirements(
        scheme="exact",
        network=config.network,
        asset=usdc["asset"],
        amount="10000",
        pay_to=pay_to,
        max_timeout_seconds=60,
        extra={"name": usdc["name"], "version": usdc["version"]},
    )
    required = PaymentRequired(
        resource=ResourceInfo(url="https://api.example/weather"), accepts=[offer]
    )
    return encode_payment_required_header(required)


def _settles_from(header: str, offer: PaymentRequirements, address: str) -> None:
    """The SDK reads the header back, its accepted terms are the offer's exactly, and
    its exact-EVM facilitator verification accepts it as paid by ``address``."""
    payload = decode_payment_signature_header(header)
    assert isinstance(payload, PaymentPayload)  # version 2, not 1
    assert payload.accepted == offer
    x402 = _guide_config().assets["USDC"].x402
    assert x402 is not None
    chain = LocalEip3009Chain(x402.domain(), {address: 10**9})
    result = ExactEvmScheme(chain).verify(payload, offer)
    assert result.is_valid is True, (result.invalid_reason, result.invalid_message)
    assert result.payer == address


def _printed_address(stdout: str, key_id: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(f"key {key_id}: address ")]
    address = line.rsplit(" ", 1)[1]
    assert address == evm_math.checksum_address(evm_math.parse_address(address))
    return address


@pytest.fixture(scope="module")
def guide_signer(dev_top: Path) -> Iterator[tuple[str, str]]:
    """The guide's sections 1 to 3 done in ``dev_top``; yields the x402 key's address and
    the address of the signer the guide then runs (its port and metrics are set from the
    environment here, not the development defaults, so that runs never collide)."""
    config_text, pack_text = _guide_blocks("toml")
    (dev_top / "x402-dev.toml").write_text(config_text, encoding="utf-8")
    (dev_top / "data" / "policy" / "x402.toml").write_text(pack_text, encoding="utf-8")
    made = _guide_ran(dev_top, "scripts/keys.py generate", "--profile x402-exact-evm")
    assert "profile=x402-exact-evm, sensitive=True, extractable=False" in made
    address = _printed_address(made, "x402.v1")
    listed = _guide_ran(dev_top, "scripts/keys.py list")
    (row,) = [r for r in listed.splitlines() if r.startswith("x402.v1\t")]
    assert "profile=x402-exact-evm" in row and "never_extractable=True" in row
    assert "UNSAFE" not in row
    assert _guide_ran(dev_top, "scripts/keys.py export", "--format address") == address + "\n"
    _guide_ran(dev_top, "scripts/pki.py issue")
    checked = _guide_ran(dev_top, "paywarden policy check")
    assert "USDC: keys x402" in checked
    assert _guide_commands("paywarden serve --config x402-dev.toml")
    env = {"PAYWARDEN_SERVER__LISTEN": "127.0.0.1:0", "PAYWARDEN_METRICS__LISTEN": ""}
    with serve(dev_top / "x402-dev.toml", env=env) as srv:
        yield address, srv.addr


def _session_for_x402_agent(top: Path, addr: str) -> str:
    with _dev_channel(top, addr, "planner", "dev-planner") as ch:
        opened = sessions_pb2_grpc.SessionsStub(ch).OpenSession(
            sessions_pb2.OpenSessionRequest(
                agent_id="x402-agent",
                task_description="read the weather API",
                budgets=[sessions_pb2.AssetBudget(asset="USDC", amount="1.00")],
                ttl_seconds=900,
            ),
            timeout=30,
        )
    return str(opened.session.session_id)


def test_the_guides_token_is_the_x402_sdks_own() -> None:
    """The asset the guide configures is the token, domain and decimals the x402 SDK
    itself names for that network (what its resource servers ask for)."""
    x402 = _guide_config().assets["USDC"]
    assert x402.x402 is not None
    (usdc, *_others) = DEFAULT_ASSETS[x402.x402.network]
    assert (x402.x402.contract, x402.x402.eip712_name, x402.x402.eip712_version) == (
        usdc["asset"],
        usdc["name"],
        usdc["version"],
    )
    assert x402.decimals == usdc["decimals"]


def test_the_guide_provisions_configures_pays_and_rotates_as_printed(
    dev_top: Path, guide_signer: tuple[str, str]
) -> None:
    address, addr = guide_signer
    (pay_to,) = tomllib.loads(_guide_blocks("toml")[1])["payees"]["allow"]
    code = _agent_code()
    build: Callable[[str, PaymentRequired], signer_pb2.SignX402Request]
    build, pay = code["x402_payment_request"], code["x402_payment_headers"]
    required = decode_payment_required_header(_resource_server_402(pay_to))
    assert isinstance(required, PaymentRequired)
    session = _session_for_x402_agent(dev_top, addr)
    with _dev_channel(dev_top, addr, "agent", "x402-agent") as ch:
        signer = signer_pb2_grpc.SignerStub(ch)
        request = build(session, required)
        headers = pay(signer, request)
        assert list(headers) == ["PAYMENT-SIGNATURE"]
        _settles_from(headers["PAYMENT-SIGNATURE"], required.accepts[0], address)
        # The same request again: the same authorisation, not signed twice.
        assert pay(signer, request) == headers

        rotated = _guide_ran(dev_top, "scripts/keys.py rotate", "--label x402")
        new_address = _printed_address(rotated, "x402.v2")
        assert new_address != address and "key x402.v1: verify-only" in rotated
        after = pay(signer, build(session, required))
        _settles_from(after["PAYMENT-SIGNATURE"], required.accepts[0], new_address)
        listed = signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=30).evm_keys
        assert [(k.key_id, k.address, k.state) for k in listed] == [
            ("x402.v1", address, "verify-only"),
            ("x402.v2", new_address, "active"),
        ]
