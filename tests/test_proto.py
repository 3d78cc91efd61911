"""The generated code in proto/ is what grpcio-tools makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PROTO_DIR = ROOT / "proto" / "paywarden" / "v1"
GENERATED = sorted(
    p.name for p in PROTO_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in PROTO_DIR.glob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT / "proto" / "..", check=True,
    )  # fmt: skip
    fresh = sorted(p.name for p in (tmp_path / "paywarden" / "v1").iterdir())
    assert fresh == GENERATED, "generated files differ from the committed set"
    stale = [
        name
        for name in fresh
        if (tmp_path / "paywarden" / "v1" / name).read_bytes() != (PROTO_DIR / name).read_bytes()
    ]
    assert not stale, f"stale generated code, run scripts/gen-proto.sh: {stale}"


def test_gen_script_matches_this_test() -> None:
    # scripts/gen-proto.sh is the one reproducible command; it must list every .proto.
    script = (ROOT / "scripts" / "gen-proto.sh").read_text(encoding="utf-8")
    for proto in PROTO_DIR.glob("*.proto"):
        assert f"proto/paywarden/v1/{proto.name}" in script


def test_every_field_is_documented() -> None:
    """Each message field in the protos has a comment right above it (or shares one)."""
    missing = []
    for proto in PROTO_DIR.glob("*.proto"):
        lines = proto.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = (
                stripped.endswith(";")
                and "=" in stripped
                and not stripped.startswith(("syntax", "package", "option", "//", "rpc"))
            )
            if not is_field:
                continue
            j = i - 1
            while j >= 0 and lines[j].strip() and not lines[j].strip().startswith("//"):
                j -= 1  # fields grouped under one comment
            if j < 0 or not lines[j].strip().startswith("//"):
                missing.append(f"{proto.name}:{i + 1} {stripped}")
    assert not missing, "undocumented fields: " + ", ".join(missing)
