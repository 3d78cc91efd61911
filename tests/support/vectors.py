"""The test vectors under tests/vectors/ and the independent references that made them.

scripts/vectors.py holds the RFC 9162 reference (written from the RFC, importing
nothing from Paywarden) and writes the vector files; tests read the files, and the
tests that check a live log against RFC 9162 use the same reference, typed here.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from tests.helpers import ROOT

VECTORS = ROOT / "tests" / "vectors"


def load(name: str) -> dict[str, Any]:
    """tests/vectors/NAME.json."""
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def flipped(digest: bytes) -> bytes:
    """``digest`` with the lowest bit of its first byte flipped: a hash that must not verify."""
    return bytes([digest[0] ^ 1]) + digest[1:]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "paywarden_vectors_script", ROOT / "scripts" / "vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _script()
"""scripts/vectors.py, loaded as a module (it is a script, not a package)."""

# RFC 9162 section 2.1, from scripts/vectors.py.
rfc_leaf: Callable[[bytes], bytes] = script.rfc_leaf
mth: Callable[[Sequence[bytes]], bytes] = script.mth
rfc_path: Callable[[int, Sequence[bytes]], list[bytes]] = script.rfc_path
rfc_proof: Callable[[int, Sequence[bytes]], list[bytes]] = script.rfc_proof
rfc_verify_inclusion: Callable[[int, int, bytes, Sequence[bytes], bytes], bool] = (
    script.rfc_verify_inclusion
)
rfc_verify_consistency: Callable[[int, int, bytes, bytes, Sequence[bytes]], bool] = (
    script.rfc_verify_consistency
)
