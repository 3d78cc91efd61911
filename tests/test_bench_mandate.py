"""scripts/bench_mandate.py (``scripts/bench.py --mandate``) makes the mandate chains the
benchmark opens its sessions from with ``cryptography`` alone: one chain, made from the keys
and ``[mandates]`` section it provisions, is accepted by the signer's verifier as the
signer's configuration reads that section, and by the sd-jwt reference implementation hop
by hop (tests/support/mandates.py's oracle). No server: the benchmark runs it by hand."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto.jwk import JWK
from paywarden.signer.mandate_config import MandateConfig
from paywarden.verify.mandates import verify_mandate

from scripts import bench_mandate
from tests.support.mandates import decimals_of, mandate_id_of, oracle_verify

AGENTS = ("bench-agent-1", "bench-agent-2")


def _key(directory: Path, name: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((directory / f"{name}.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_a_bench_chain_verifies_with_the_signer_and_the_reference_implementation(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "mandates"
    config = MandateConfig.model_validate(
        tomllib.loads(bench_mandate.provision(keys, AGENTS))["mandates"]
    )
    now = int(time.time())
    chain = bench_mandate.chain_for(keys, "bench-agent-2", 7, "USD", 2, now)

    # The signer's verifier, with the issuer the [mandates] section trusts.
    verified = verify_mandate(
        chain, config.trusted(), now=now, decimals=decimals_of, vct=tuple(config.vct)
    )
    agent_jwk = JWK.from_pyca(_key(keys, "agent-bench-agent-2").public_key())
    assert verified.holder_jkt == agent_jwk.thumbprint()  # jwcrypto's RFC 7638
    assert config.holders()[verified.holder_jkt] == "bench-agent-2"
    assert verified.hops == 2 and verified.presentation is None
    assert verified.id == mandate_id_of(chain.split("~~")[1])
    assert verified.expires_at == now + bench_mandate.TTL_SECONDS
    c = verified.constraints
    assert (c.currency, c.min_minor, c.max_minor) == ("USD", 1, 100_00)
    assert c.budget_minor == bench_mandate.BUDGET_MAJOR * 100  # major units in the chain

    # The sd-jwt reference implementation, hop by hop from the issuer's key.
    issuer = JWK.from_pyca(_key(keys, "issuer").public_key())
    credential, mandate_hop = oracle_verify(chain, {bench_mandate.ISSUER_KID: issuer})
    user = JWK.from_pyca(_key(keys, "user").public_key())
    assert JWK(**credential["cnf"]["jwk"]).thumbprint() == user.thumbprint()
    [item] = mandate_hop["delegate_payload"]
    assert item["vct"] == "mandate.payment.open.1"
    assert JWK(**item["cnf"]["jwk"]).thumbprint() == agent_jwk.thumbprint()
    assert {c["type"]: c["max"] for c in item["constraints"]} == {
        "payment.amount_range": 100_00,
        "payment.budget": bench_mandate.BUDGET_MAJOR,
    }

    # Each session's chain is a mandate of its own (its own ledger).
    other = bench_mandate.chain_for(keys, "bench-agent-2", 8, "USD", 2, now)
    again = verify_mandate(other, config.trusted(), now=now, decimals=decimals_of)
    assert again.id != verified.id
