#!/usr/bin/env python3
"""Writes docs/api.md, the API reference, from the comments in proto/paywarden/v1/*.proto.

    .venv/bin/python scripts/gen-api-docs.py            # writes docs/api.md
    .venv/bin/python scripts/gen-api-docs.py --check    # exit 1 if docs/api.md is stale
    .venv/bin/python scripts/gen-api-docs.py --out FILE [--proto-dir DIR]

It does not parse the .proto text itself: grpcio-tools' protoc compiles the files into a
descriptor set with source info (--include_source_info), which holds every service, RPC,
message, field and enum with the comment above it (or after it on the same line). A field
without a comment of its own shares the comment of the field group it belongs to, the rule
tests/test_proto.py checks: "// Scope and target" above `scope` and `target` documents both;
a field of a oneof without its own comment takes the oneof's.

Every RPC's comment must start with `Roles: a, b (qualifier), c.`; an RPC without it, or a
message, field or enum value without a comment, stops the script (exit 2) naming it, so the
reference cannot silently lose what the protos say.

The output depends only on the .proto files: files in FILE_ORDER (then by name), everything
else in declaration order, no dates or versions. Run it after changing a .proto (the lead runs it
after merging new RPCs); tests/test_api_docs.py fails while docs/api.md is stale.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("paywarden") / "v1"
OUT = ROOT / "docs" / "api.md"

# Field numbers of the descriptor messages, as SourceCodeInfo.Location.path uses them.
_FILE_SYNTAX = 12
_FILE_MESSAGE = 4
_FILE_ENUM = 5
_FILE_SERVICE = 6
_MESSAGE_FIELD = 2
_MESSAGE_NESTED = 3
_MESSAGE_ENUM = 4
_MESSAGE_ONEOF = 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    FD.TYPE_DOUBLE: "double",
    FD.TYPE_FLOAT: "float",
    FD.TYPE_INT64: "int64",
    FD.TYPE_UINT64: "uint64",
    FD.TYPE_INT32: "int32",
    FD.TYPE_FIXED64: "fixed64",
    FD.TYPE_FIXED32: "fixed32",
    FD.TYPE_BOOL: "bool",
    FD.TYPE_STRING: "string",
    FD.TYPE_BYTES: "bytes",
    FD.TYPE_UINT32: "uint32",
    FD.TYPE_SFIXED32: "sfixed32",
    FD.TYPE_SFIXED64: "sfixed64",
    FD.TYPE_SINT32: "sint32",
    FD.TYPE_SINT64: "sint64",
}


class DocError(Exception):
    """Something in the protos the reference cannot be made from; names it."""


@dataclass(frozen=True)
class Comment:
    text: str  # paragraphs separated by a blank line, lines unwrapped
    start_line: int  # 0-based line of the element's declaration
    end_line: int


def _clean(raw: str) -> str:
    """A protoc comment (" line\\n line\\n\\n next\\n") as paragraphs of joined lines."""
    paragraphs: list[list[str]] = [[]]
    for line in raw.splitlines():
        stripped = line.strip()
        if stripped:
            paragraphs[-1].append(stripped)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def _comments(source: descriptor_pb2.SourceCodeInfo) -> dict[tuple[int, ...], Comment]:
    out = {}
    for loc in source.location:
        text = _clean(loc.leading_comments) or _clean(loc.trailing_comments)
        span = list(loc.span)
        end = span[2] if len(span) == 4 else span[0]
        out[tuple(loc.path)] = Comment(text, span[0], end)
    return out


def _html(text: str) -> str:
    """Markdown text with <, > and & shown as written (spiffe://<trust-domain>/...), except
    inside `code spans`, where Markdown shows them as written already."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text for a table cell: one line, pipes escaped."""
    return _html(" ".join(text.split())).replace("|", "\\|")


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".")


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: str
    response: str
    roles: str
    text: str
    client_streaming: bool
    server_streaming: bool


def split_roles(comment: str, where: str) -> tuple[str, str]:
    """("agent (its own), operator", "the rest") from "Roles: agent (its own), operator. The rest":
    the roles end at the first full stop outside parentheses."""
    if not comment.startswith("Roles:"):
        raise DocError(f"{where}: its comment does not start with 'Roles:'")
    body = comment[len("Roles:") :]
    depth = 0
    for i, ch in enumerate(body):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            roles = " ".join(body[:i].split())
            if not roles:
                break
            return roles, body[i + 1 :].strip()
    raise DocError(f"{where}: its 'Roles:' list does not end with a full stop")


class FileDoc:
    """One .proto file's descriptor with its comments, rendered to Markdown."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto, types: dict[str, str]) -> None:
        self.proto = proto
        self.name = Path(proto.name).name
        self.types = types  # full name -> anchor target ("" for types outside the package)
        self.comments = _comments(proto.source_code_info)
        self.maps: dict[str, descriptor_pb2.DescriptorProto] = {}  # map<K, V> entry types

        def entries(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
            for nested in message.nested_type:
                if nested.options.map_entry:
                    self.maps[f"{prefix}.{message.name}.{nested.name}"] = nested
                entries(f"{prefix}.{message.name}", nested)

        for message in proto.message_type:
            entries(f".{proto.package}", message)

    def comment(self, path: tuple[int, ...]) -> str:
        found = self.comments.get(path)
        return found.text if found else ""

    def required(self, path: tuple[int, ...], where: str) -> str:
        text = self.comment(path)
        if not text:
            raise DocError(f"{self.name}: {where} has no comment")
        return text

    # -- services --

    def rpcs(self) -> Iterator[Rpc]:
        for s, service in enumerate(self.proto.service):
            for m, method in enumerate(service.method):
                where = f"{self.name}: rpc {service.name}.{method.name}"
                path = (_FILE_SERVICE, s, _SERVICE_METHOD, m)
                roles, text = split_roles(
                    self.required(path, f"rpc {service.name}.{method.name}"), where
                )
                yield Rpc(
                    service.name,
                    method.name,
                    method.input_type,
                    method.output_type,
                    roles,
                    text,
                    method.client_streaming,
                    method.server_streaming,
                )

    def type_link(self, full_name: str) -> str:
        short = full_name.rsplit(".", 1)[-1]
        target = self.types.get(full_name, "")
        if not target:
            return f"`{full_name.lstrip('.')}`"
        return f"[`{short}`](#{target})"

    def render_services(self) -> list[str]:
        out: list[str] = []
        for s, service in enumerate(self.proto.service):
            out += [f"### Service `{service.name}`", ""]
            text = self.comment((_FILE_SERVICE, s))
            if text:
                out += [_html(text), ""]
            for rpc in (r for r in self.rpcs() if r.service == service.name):
                anchor = f"{self.proto.package}.{service.name}.{rpc.name}"
                request = ("stream " if rpc.client_streaming else "") + self.type_link(rpc.request)
                response = ("stream " if rpc.server_streaming else "") + self.type_link(
                    rpc.response
                )
                out += [
                    f'<a id="{anchor}"></a>',
                    f"#### `{service.name}.{rpc.name}`",
                    "",
                    f"{request} → {response}",
                    "",
                    f"**Roles:** {_html(rpc.roles)}.",
                    "",
                ]
                if rpc.text:
                    out += [_html(rpc.text), ""]
        return out

    # -- messages and enums --

    def _field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
            return self.type_link(field.type_name)
        return f"`{_SCALARS[field.type]}`"

    def _map_entry(self, field: descriptor_pb2.FieldDescriptorProto) -> str | None:
        entry = self.maps.get(field.type_name)
        if entry is None:
            return None
        key, value = entry.field
        return f"map&lt;{self._field_type(key)}, {self._field_type(value)}&gt;"

    def render_message(
        self, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str
    ) -> list[str]:
        name = f"{prefix}{message.name}"
        full = f"{self.proto.package}.{name}"
        out = [f'<a id="{full}"></a>', f"#### `{name}`", ""]
        text = self.comment(path)
        if text:
            out += [_html(text), ""]
        real_oneofs = {
            i
            for i, f in enumerate(message.field)
            if f.HasField("oneof_index") and not f.proto3_optional
        }
        if not message.field:
            out += ["No fields.", ""]
        else:
            out += ["| field | number | type | description |", "|---|---|---|---|"]
            group: tuple[str, str] | None = None  # the comment a field group shares
            last_end = -2
            for i, field in enumerate(message.field):
                found = self.comments.get((*path, _MESSAGE_FIELD, i))
                start = found.start_line if found else -1
                own = found.text if found else ""
                if own:
                    text = own
                    group = (field.name, own)
                elif i in real_oneofs:
                    oneof = message.oneof_decl[field.oneof_index].name
                    shared = self.comment((*path, _MESSAGE_ONEOF, field.oneof_index))
                    text = f"One of `{oneof}`: {shared}" if shared else ""
                elif group is not None and start == last_end + 1:
                    text = f"(with `{group[0]}`) {group[1]}"
                else:
                    text = ""
                if not text:
                    raise DocError(f"{self.name}: field {name}.{field.name} has no comment")
                last_end = found.end_line if found else -2
                mapped = self._map_entry(field)
                if mapped is not None:
                    kind = mapped
                elif field.label == FD.LABEL_REPEATED:
                    kind = f"repeated {self._field_type(field)}"
                elif field.proto3_optional:
                    kind = f"optional {self._field_type(field)}"
                else:
                    kind = self._field_type(field)
                if i in real_oneofs and not text.startswith("One of"):
                    text = f"One of `{message.oneof_decl[field.oneof_index].name}`. {text}"
                out.append(f"| `{field.name}` | {field.number} | {kind} | {_cell(text)} |")
            out.append("")
        for e, enum in enumerate(message.enum_type):
            out += self.render_enum(enum, (*path, _MESSAGE_ENUM, e), f"{name}.")
        for n, nested in enumerate(message.nested_type):
            if nested.options.map_entry:
                continue
            out += self.render_message(nested, (*path, _MESSAGE_NESTED, n), f"{name}.")
        return out

    def render_enum(
        self, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str
    ) -> list[str]:
        name = f"{prefix}{enum.name}"
        full = f"{self.proto.package}.{name}"
        out = [f'<a id="{full}"></a>', f"#### enum `{name}`", ""]
        text = self.comment(path)
        if text:
            out += [_html(text), ""]
        out += ["| value | number | description |", "|---|---|---|"]
        for v, value in enumerate(enum.value):
            doc = self.required((*path, _ENUM_VALUE, v), f"enum value {name}.{value.name}")
            out.append(f"| `{value.name}` | {value.number} | {_cell(doc)} |")
        return [*out, ""]

    def render(self) -> list[str]:
        out = [f"## `{self.name}`", ""]
        intro = self.comment((_FILE_SYNTAX,))
        if intro:
            out += [_html(intro), ""]
        out += self.render_services()
        if self.proto.message_type:
            out += ["### Messages", ""]
            for m, message in enumerate(self.proto.message_type):
                out += self.render_message(message, (_FILE_MESSAGE, m), "")
        if self.proto.enum_type:
            out += ["### Enums", ""]
            for e, enum in enumerate(self.proto.enum_type):
                out += self.render_enum(enum, (_FILE_ENUM, e), "")
        return out


def descriptor_set(proto_root: Path, files: Sequence[Path]) -> descriptor_pb2.FileDescriptorSet:
    """What protoc compiles ``files`` (relative to ``proto_root``) into, with source info."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto_root}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *(str(f) for f in files),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DocError(f"protoc failed: {done.stderr.strip()}")
        result = descriptor_pb2.FileDescriptorSet()
        result.ParseFromString(out.read_bytes())
        return result


def _collect_types(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    types: dict[str, str] = {}

    def walk(package: str, prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}{message.name}"
        types[f".{package}.{name}"] = f"{package}.{name}"
        for enum in message.enum_type:
            types[f".{package}.{name}.{enum.name}"] = f"{package}.{name}.{enum.name}"
        for nested in message.nested_type:
            walk(package, f"{name}.", nested)

    for f in files:
        for message in f.message_type:
            walk(f.package, "", message)
        for enum in f.enum_type:
            types[f".{f.package}.{enum.name}"] = f"{f.package}.{enum.name}"
    return types


HEADER = """\
# API reference: `paywarden.v1`

<!-- Generated by scripts/gen-api-docs.py from proto/paywarden/v1/*.proto. Do not edit:
change the comments in the .proto files and run the script again
(tests/test_api_docs.py fails while this file is stale). -->

Generated from the comments in `proto/paywarden/v1/*.proto` by
`scripts/gen-api-docs.py`; edit the `.proto` files, not this page. Every call is gRPC over
mutual TLS: the client certificate's URI SAN, `spiffe://<trust-domain>/<role>/<id>`, names
the caller's role and id, and each RPC lists the roles that may call it. Errors carry a gRPC
status and a reason code (in the message, a `google.rpc.ErrorInfo` detail with domain
`paywarden.dev`, and the trailing metadata key `paywarden-reason`). Standard gRPC health
checking (`grpc.health.v1.Health`) is served to every role; server reflection only to
operators, and only when `server.reflection = true`.
"""


# The order a reader meets the services in: signing first, the operators' last. A file not
# listed here comes after them, in name order.
FILE_ORDER = ("signer.proto", "sessions.proto", "approvals.proto", "control.proto")


def _file_order(f: descriptor_pb2.FileDescriptorProto) -> tuple[int, str]:
    name = Path(f.name).name
    return (FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER), name)


def render(proto_root: Path = PROTO_ROOT) -> str:
    files = sorted((proto_root / PACKAGE_DIR).glob("*.proto"))
    if not files:
        raise DocError(f"no .proto files in {proto_root / PACKAGE_DIR}")
    found = descriptor_set(proto_root, [f.relative_to(proto_root) for f in files])
    wanted = {str(f.relative_to(proto_root)) for f in files}
    ours = sorted((f for f in found.file if f.name in wanted), key=_file_order)
    types = _collect_types(ours)
    docs = [FileDoc(f, types) for f in ours]
    out = [HEADER, "## Who may call what", ""]
    out += ["| RPC | roles | request → response |", "|---|---|---|"]
    for doc in docs:
        for rpc in doc.rpcs():
            anchor = f"{doc.proto.package}.{rpc.service}.{rpc.name}"
            out.append(
                f"| [`{rpc.service}.{rpc.name}`](#{anchor}) | {_cell(rpc.roles)} "
                f"| {doc.type_link(rpc.request)} → {doc.type_link(rpc.response)} |"
            )
    out.append("")
    for doc in docs:
        out += doc.render()
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write (docs/api.md)")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_ROOT, help="the include root")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is not fresh")
    args = parser.parse_args(argv)
    try:
        text = render(args.proto_dir)
    except DocError as exc:
        print(f"gen-api-docs: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(
                f"gen-api-docs: {args.out} is stale: run scripts/gen-api-docs.py", file=sys.stderr
            )
            return 1
        print(f"gen-api-docs: {args.out} is fresh")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"gen-api-docs: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
