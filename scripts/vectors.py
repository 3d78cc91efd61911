#!/usr/bin/env python3
"""Regenerates the test vectors under tests/vectors/ with implementations that share
no code with Paywarden:

    scripts/vectors.py            write tests/vectors/{jcs,rfc9162,jws}.json
    scripts/vectors.py --check    exit 1 if a file differs from what would be written

- jcs.json: RFC 8785 canonical JSON, made by the `rfc8785` package.
- rfc9162.json: Merkle tree hashes, inclusion paths and consistency proofs of RFC 9162
  section 2.1, made by the reference below (written from the RFC, step by step; it
  imports nothing from Paywarden). The leaves are the certificate-transparency
  project's classic eight test inputs, and the script checks the eight-leaf root
  against the value published with them before it writes anything.
- jws.json: ES256 compact JWS (RFC 7515) made by `joserfc`: the signing input of each
  case, and one signed example with its public key. ECDSA signatures are randomised,
  so --check compares the signing inputs and verifies the stored signature instead of
  comparing its bytes. No private key is written anywhere.

tests/test_vectors.py reads the files, and fails when they drift from this script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"

# -- RFC 9162 section 2.1, the reference ---------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc_leaf(entry: bytes) -> bytes:
    """2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return _sha256(b"\x00" + entry)


def rfc_node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def _largest_power_of_two_below(n: int) -> int:
    """k < n <= 2k, for n > 1."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def mth(entries: Sequence[bytes]) -> bytes:
    """2.1.1: the Merkle Tree Hash of a list of entries (raw bytes, not hashes)."""
    n = len(entries)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return rfc_leaf(entries[0])
    k = _largest_power_of_two_below(n)
    return rfc_node(mth(entries[:k]), mth(entries[k:]))


def rfc_path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """2.1.3.1: PATH(m, D[n])."""
    n = len(entries)
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if m < k:
        return [*rfc_path(m, entries[:k]), mth(entries[k:])]
    return [*rfc_path(m - k, entries[k:]), mth(entries[:k])]


def rfc_proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """2.1.4.1: PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    return _rfc_subproof(m, entries, True)


def _rfc_subproof(m: int, entries: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return [*_rfc_subproof(m, entries[:k], b), mth(entries[k:])]
    return [*_rfc_subproof(m - k, entries[k:], False), mth(entries[:k])]


def rfc_verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, path: Sequence[bytes], root: bytes
) -> bool:
    """2.1.3.2, step by step."""
    # 1. leaf_index >= tree_size fails
    if leaf_index >= tree_size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1; 3. r = hash
    fn, sn, r = leaf_index, tree_size - 1, leaf_hash
    # 4. for each p in the inclusion path
    for p in path:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            r = rfc_node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = rfc_node(r, p)
        fn >>= 1  # c.
        sn >>= 1
    # 5.
    return sn == 0 and r == root


def rfc_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """2.1.4.2 (for 0 < first < second); first == second: PROOF is empty, heads equal."""
    if first == second:
        return not path and first_hash == second_hash
    if not 0 < first < second:
        return False
    # 1. an empty path fails
    if not path:
        return False
    consistency_path = list(path)
    # 2. first an exact power of 2: prepend first_hash
    if first & (first - 1) == 0:
        consistency_path.insert(0, first_hash)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = consistency_path[0]
    # 6.
    for c in consistency_path[1:]:
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = rfc_node(c, fr)
            sr = rfc_node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = rfc_node(sr, c)
        fn >>= 1  # c.
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0


# The certificate-transparency project's Merkle tree test inputs, and the root of all
# eight that it publishes with them: a check of the reference from outside it.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
             "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
CT_ROOT_OF_EIGHT = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def rfc9162_vectors() -> dict[str, Any]:
    entries = [bytes.fromhex(h) for h in CT_LEAVES]
    if mth(entries).hex() != CT_ROOT_OF_EIGHT:
        raise SystemExit("vectors.py: the RFC 9162 reference disagrees with the published root")
    n_all = len(entries)
    return {
        "source": "RFC 9162 section 2.1, the reference in scripts/vectors.py",
        "leaves_hex": CT_LEAVES,
        "roots": [{"size": n, "root": mth(entries[:n]).hex()} for n in range(n_all + 1)],
        "inclusion": [
            {"index": m, "size": n, "path": [h.hex() for h in rfc_path(m, entries[:n])]}
            for n in range(1, n_all + 1)
            for m in range(n)
        ],
        "consistency": [
            {"first": m, "second": n, "proof": [h.hex() for h in rfc_proof(m, entries[:n])]}
            for n in range(1, n_all + 1)
            for m in range(1, n + 1)
        ],
    }


# -- RFC 8785 --------------------------------------------------------------------------------

MAX_SAFE = 2**53 - 1
JCS_INPUTS: list[tuple[str, Any]] = [
    # RFC 8785 section 3.2.3: keys sort by UTF-16 code units, not by code points.
    ("rfc8785-3.2.3-sorting", {
        "\u20ac": "Euro Sign", "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
        "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis", "a": "Letter a",
    }),
    ("nested-keys", {"b": {"\U0001f600": 1, "\ufb33": 2}, "a": [{"z": None, "y": True}]}),
    # C0 controls: the five short escapes, the rest as lowercase \u00XX.
    ("c0-controls", "\x00\x01\x1f"),
    ("short-escapes", "\b\t\n\x0b\f\r"),
    # DEL and C1 controls are not escaped.
    ("del-and-c1", "\x7f\x85"),
    # Only quote and backslash are escaped among printable ASCII; "/" is not.
    ("quote-backslash-solidus", 'q"b\\s/'),
    # Non-ASCII is written as raw UTF-8, never as \u escapes; no normalisation.
    ("non-ascii", "\u00e9\u20ac\U0001f600"),
    ("line-separators", "\u2028\u2029"),
    ("combining-mark", "e\u0301"),
    ("null", None), ("true", True), ("false", False), ("zero", 0), ("minus-one", -1),
    ("max-safe-integer", MAX_SAFE), ("min-safe-integer", -MAX_SAFE),
    ("empty-array", []), ("empty-object", {}),
    ("array", [1, "a", None, [True]]), ("object", {"k": [False, {}]}),
    # A payment payload as the signer builds it (integers only: floats are refused).
    ("payment-claims", {
        "typ": "paywarden.payment.v1", "sid": "ses_" + "A" * 43, "task": "ab" * 32,
        "sub": "agent-7", "payee": "Caf\u00e9 \u20ac\U0001f600 \u00d6sterreich",
        "amount": "12.50", "asset": "USD", "ref": "inv-\u0416-1",
        "nonce": "AAECAwQFBgcICQoLDA0ODw", "iat": 1_700_000_000, "exp": 1_700_000_300,
        "jti": "dec_" + "B" * 43,
    }),
]  # fmt: skip


def jcs_vectors() -> dict[str, Any]:
    return {
        "source": "RFC 8785, made by the rfc8785 package",
        "cases": [
            {"name": name, "input": value, "canonical_hex": rfc8785.dumps(value).hex()}
            for name, value in JCS_INPUTS
        ],
    }


# -- RFC 7515 compact JWS, ES256 ------------------------------------------------------------

JWS_TYPE = "paywarden-payment+jwt"


def _jws_payloads() -> list[tuple[str, str, bytes]]:
    claims = dict(JCS_INPUTS)["payment-claims"]
    return [
        ("payment", "payments.v1", rfc8785.dumps(claims)),
        ("payment-second-key", "payments.v2", rfc8785.dumps({**claims, "amount": "0.01"})),
        ("empty-object", "payments.v1", b"{}"),
    ]


def jws_vectors() -> dict[str, Any]:
    key = ECKey.generate_key("P-256")  # a fresh key each run, never written
    cases: list[dict[str, Any]] = []
    for name, kid, payload in _jws_payloads():
        header = {"alg": "ES256", "kid": kid, "typ": JWS_TYPE}
        compact = jws.serialize_compact(header, payload, key, algorithms=["ES256"])
        signing_input, _, _signature = compact.rpartition(".")
        cases.append(
            {"name": name, "header": header, "payload_hex": payload.hex(),
             "signing_input": signing_input}
        )  # fmt: skip
    signed = cases[0]
    example = jws.serialize_compact(
        signed["header"], bytes.fromhex(signed["payload_hex"]), key, algorithms=["ES256"]
    )
    return {
        "source": "RFC 7515 compact serialisation, ES256 (RFC 7518 3.4), made by joserfc",
        "cases": cases,
        "signed": {
            "case": signed["name"],
            "jwk": {**key.as_dict(private=False), "kid": signed["header"]["kid"]},
            "jws": example,
        },
    }


def verify_signed_example(vectors: dict[str, Any]) -> bytes:
    """The stored example's payload, once joserfc has verified its signature."""
    keys = KeySet.import_key_set({"keys": [vectors["signed"]["jwk"]]})
    token = jws.deserialize_compact(vectors["signed"]["jws"], keys, algorithms=["ES256"])
    return bytes(token.payload)


# -- the files -------------------------------------------------------------------------------

GENERATORS = {"jcs": jcs_vectors, "rfc9162": rfc9162_vectors, "jws": jws_vectors}


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=True) + "\n"


def comparable(name: str, vectors: dict[str, Any]) -> dict[str, Any]:
    """What must not drift: everything but a JWS example's key and signature."""
    if name == "jws":
        return {k: v for k, v in vectors.items() if k != "signed"}
    return vectors


def drifted() -> list[str]:
    """The files that differ from what this script writes now (or are missing)."""
    out = []
    for name, generate in GENERATORS.items():
        path = VECTORS / f"{name}.json"
        if not path.exists():
            out.append(name)
            continue
        stored = json.loads(path.read_text(encoding="utf-8"))
        if comparable(name, stored) != comparable(name, generate()):
            out.append(name)
        elif name == "jws":
            try:
                verify_signed_example(stored)
            except (JoseError, ValueError, KeyError, TypeError):  # not verified: drift
                out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for name in stale:
            print(f"vectors.py: tests/vectors/{name}.json differs; run scripts/vectors.py")
        return 1 if stale else 0
    VECTORS.mkdir(parents=True, exist_ok=True)
    for name, generate in GENERATORS.items():
        (VECTORS / f"{name}.json").write_text(render(generate()), encoding="utf-8")
        print(f"vectors.py: wrote tests/vectors/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
