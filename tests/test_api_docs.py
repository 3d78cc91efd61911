"""docs/api.md is what scripts/gen-api-docs.py makes from the .proto files, and the generator
reads what the protos say (roles, grouped fields, oneofs, maps, nested types) or stops."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from paywarden.signer.api.authz import RPC_ROLES
from paywarden.signer.identity import Role

from tests.helpers import ROOT

GEN_API_DOCS = ROOT / "scripts" / "gen-api-docs.py"
API_DOC = ROOT / "docs" / "api.md"


def _gen_api_docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_API_DOCS), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _proto_tree(tmp_path: Path, body: str) -> Path:
    """An include root holding paywarden/v1/doc.proto with ``body`` after the header."""
    package = tmp_path / "protos" / "paywarden" / "v1"
    package.mkdir(parents=True)
    header = '// A file of the test.\nsyntax = "proto3";\n\npackage paywarden.v1;\n\n'
    (package / "doc.proto").write_text(header + body, encoding="utf-8")
    return tmp_path / "protos"


def test_the_api_reference_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "api.md"
    done = _gen_api_docs("--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == API_DOC.read_text(encoding="utf-8"), (
        "docs/api.md is stale: run scripts/gen-api-docs.py"
    )


def test_check_mode_reports_a_stale_reference(tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(API_DOC.read_text(encoding="utf-8").replace("Roles:", "Who:"), "utf-8")
    done = _gen_api_docs("--check", "--out", str(stale))
    assert done.returncode == 1
    assert "stale" in done.stderr


def test_the_reference_lists_every_rpc_with_the_roles_the_signer_enforces() -> None:
    listed: dict[str, frozenset[Role]] = {}
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\| \[`(\w+)\.(\w+)`\]\(#[\w.]+\) \| ([^|]+) \|", line):
            roles = re.sub(r"\([^)]*\)", "", m.group(3))
            listed[f"/paywarden.v1.{m.group(1)}/{m.group(2)}"] = frozenset(
                Role(r.strip()) for r in roles.split(",")
            )
    assert listed == RPC_ROLES


def test_groups_oneofs_maps_nested_types_and_multi_line_roles_are_rendered(
    tmp_path: Path,
) -> None:
    root = _proto_tree(
        tmp_path,
        """\
// The service.
service Things {
  // Roles: agent (its own things,
  // and no one else's), operator. Gets a thing.
  rpc Get(GetRequest) returns (Thing);
}

message GetRequest {
  // Scope and target ("" for all).
  string scope = 1;
  string target = 2;

  // Which one, by spiffe://<domain>/x.
  oneof which {
    string id = 3;
    int64 seq = 4;
  }
  // Labels by name.
  map<string, Thing.Kind> labels = 5;
}

// A thing.
message Thing {
  // What kind.
  enum Kind {
    // Never sent.
    KIND_UNSPECIFIED = 0;
    // Big, as r||s.
    BIG = 1;
  }
  // Its kind.
  Kind kind = 1;
  // A part.
  message Part {
    // The part's name.
    string name = 1;
  }
  // Its parts.
  repeated Part parts = 2;
}
""",
    )
    out = tmp_path / "api.md"
    done = _gen_api_docs("--proto-dir", str(root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert (
        "| [`Things.Get`](#paywarden.v1.Things.Get) | agent (its own things, and no one else's),"
        " operator |" in text
    )
    assert (
        "**Roles:** agent (its own things, and no one else's), operator.\n\nGets a thing." in text
    )
    assert '| `scope` | 1 | `string` | Scope and target ("" for all). |' in text
    assert '| `target` | 2 | `string` | (with `scope`) Scope and target ("" for all). |' in text
    assert (
        "| `seq` | 4 | `int64` | One of `which`: Which one, by spiffe://&lt;domain&gt;/x. |" in text
    )
    assert (
        "| `labels` | 5 | map&lt;`string`, [`Kind`](#paywarden.v1.Thing.Kind)&gt; "
        "| Labels by name. |" in text
    )
    assert "LabelsEntry" not in text  # a map's entry type is not a message of the API
    assert "| `BIG` | 1 | Big, as r\\|\\|s. |" in text
    assert '<a id="paywarden.v1.Thing.Part"></a>' in text
    assert "| `parts` | 2 | repeated [`Part`](#paywarden.v1.Thing.Part) | Its parts. |" in text


def test_an_rpc_without_roles_stops_the_generator(tmp_path: Path) -> None:
    root = _proto_tree(
        tmp_path,
        "service S {\n  // Gets it.\n  rpc Get(E) returns (E);\n}\n\n// Empty.\nmessage E {}\n",
    )
    done = _gen_api_docs("--proto-dir", str(root), "--out", str(tmp_path / "api.md"))
    assert done.returncode == 2
    assert "rpc S.Get: its comment does not start with 'Roles:'" in done.stderr
    assert not (tmp_path / "api.md").exists()


def test_a_field_without_a_comment_stops_the_generator(tmp_path: Path) -> None:
    # `b` is not part of `a`'s group: a blank line separates them.
    root = _proto_tree(
        tmp_path, "message M {\n  // The a.\n  string a = 1;\n\n  string b = 2;\n}\n"
    )
    done = _gen_api_docs("--proto-dir", str(root), "--out", str(tmp_path / "api.md"))
    assert done.returncode == 2
    assert "field M.b has no comment" in done.stderr
