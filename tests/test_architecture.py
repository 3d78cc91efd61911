"""The layers' import rules, read from the source rather than from what happens to be loaded.

Every module of ``paywarden.signer``, ``paywarden.policy`` and ``paywarden.hsm`` is imported
(a module that no longer imports fails here first) and its source parsed with :mod:`ast`: each
``import`` and ``from ... import``, at module level or inside a function, is an edge of the
import graph. The rules (docs/architecture.md states them in words):

- no import cycle between modules;
- ``paywarden.policy`` is pure: it imports nothing from ``paywarden.signer`` or ``paywarden.hsm``;
- only ``paywarden.hsm`` imports python-pkcs11;
- only the gRPC edge (``paywarden.signer.api``) and the command lines (``paywarden.signer.cli``)
  import gRPC (``grpc``, ``grpc_*`` and the generated ``*_pb2_grpc`` stubs);
- each module imports only from its own part of its layer or from the layers below it
  (``LAYERS``), and of the command lines only ``serve``'s module imports the gRPC edge;
- no module of ``paywarden.signer`` is over ``MAX_LINES`` lines;
- no module outside ``paywarden.signer.store`` imports a database driver or holds an SQL statement.

All but the cycle rule are about a module's own import statements, not what those modules
import in turn; the cycle rule follows the whole graph.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = (
    "paywarden.signer",
    "paywarden.policy",
    "paywarden.hsm",
    "paywarden.verify",
    "paywarden.client",
)
GRPC_LAYERS = ("paywarden.signer.api", "paywarden.signer.cli", "paywarden.client")
MAX_LINES = 400

# Lowest first. A module belongs to the part with the longest name that prefixes its own
# (``paywarden.signer`` itself: the base modules, errors, config, identity, logs, metrics,
# timekeeping, deadlines, encoding). It may import its own part and any part of a lower
# layer; two parts of one layer import nothing from each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("paywarden.policy.vocabulary",),
    ("paywarden.policy", "paywarden.hsm", "paywarden.verify"),
    ("paywarden.signer",),
    ("paywarden.signer.auditlog",),
    ("paywarden.signer.store",),
    ("paywarden.signer.core",),
    ("paywarden.signer.api", "paywarden.client"),
    ("paywarden.signer.cli",),
)
# The command lines import the gRPC edge only to start the server (``paywarden serve``).
CLI_MODULES_STARTING_THE_SERVER = ("paywarden.signer.cli.commands",)


@dataclass(frozen=True)
class Import:
    """One imported name, as absolute as the source allows, and where it is imported."""

    # ``import a.b``: "a.b"; ``from a.b import c``: "a.b.c" (c a module or any other name)
    name: str
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def source(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def imports(self) -> list[Import]:
        """Every import statement of the module, wherever it stands in the code."""
        package = self.name if self.is_package else self.name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(self.source, filename=str(self.path))):
            if isinstance(node, ast.Import):
                found += [Import(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(package, node.module, node.level)
                found += [Import(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        return found


def _absolute(package: str, module: str | None, level: int) -> str:
    if level == 0:
        assert module is not None
        return module
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _walk(package: str) -> Iterator[Module]:
    pkg = importlib.import_module(package)
    assert pkg.__file__ is not None
    yield Module(package, Path(pkg.__file__), is_package=True)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        if info.ispkg:
            yield from _walk(info.name)
        else:
            yield Module(info.name, Path(spec.origin), is_package=False)


def modules() -> dict[str, Module]:
    """Every module of the three packages, by name."""
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for module in _walk(package):
            found.setdefault(module.name, module)
    return found


def _target(name: str, known: dict[str, Module]) -> str | None:
    """The module of ours an imported name lives in: the longest prefix that is one."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(known: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, among ``known``.

    ``from package import name`` is an edge to the submodule when ``name`` is one, else
    to the package itself (its ``__init__``)."""
    graph: dict[str, dict[str, int]] = {}
    for name, module in known.items():
        edges = graph.setdefault(name, {})
        for imp in module.imports():
            target = _target(imp.name, known)
            if target is not None and target != name:
                edges.setdefault(target, imp.line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _where(module: Module, imp: Import) -> str:
    return f"{module.name} (line {imp.line}) imports {imp.name}"


# -- the checker sees what it must --------------------------------------------------------


def test_every_module_of_the_three_packages_imports_and_parses() -> None:
    known = modules()
    assert {"paywarden.signer.api.server", "paywarden.policy.engine", "paywarden.hsm.token"} <= set(
        known
    )
    for name, module in known.items():
        if name.rpartition(".")[2] != "__main__":  # running it is what __main__ does
            importlib.import_module(name)
        assert module.imports() is not None


def test_the_graph_holds_module_level_and_function_level_imports() -> None:
    graph = import_graph(modules())
    # module level, ``from package import module``
    assert "paywarden.signer.auditlog.merkle" in graph["paywarden.signer.auditlog.verification"]
    # module level, ``from package import name``: the package's __init__
    assert "paywarden.hsm" in graph["paywarden.signer.api.startup"]
    # inside a function (commands._policy_check)
    assert "paywarden.policy.describe" in graph["paywarden.signer.cli.commands"]


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


# -- the rules ----------------------------------------------------------------------------


def test_no_import_cycle() -> None:
    graph = import_graph(modules())
    found = cycles(graph)
    described = [
        "; ".join(
            f"{m} imports "
            + ", ".join(f"{n} (line {line})" for n, line in graph[m].items() if n in c)
            for m in c
        )
        for c in found
    ]
    assert not found, "import cycles:\n" + "\n".join(described)


def test_policy_imports_nothing_from_the_signer_or_the_hsm() -> None:
    bad = [
        _where(module, imp)
        for name, module in modules().items()
        if name.startswith("paywarden.policy")
        for imp in module.imports()
        if imp.name.split(".")[:2] in (["paywarden", "signer"], ["paywarden", "hsm"])
    ]
    assert not bad, bad


def test_only_the_hsm_package_imports_pkcs11() -> None:
    known = modules()
    bad = [
        _where(module, imp)
        for name, module in known.items()
        if not (name == "paywarden.hsm" or name.startswith("paywarden.hsm."))
        for imp in module.imports()
        if imp.name.split(".")[0] == "pkcs11"
    ]
    assert not bad, bad
    # and the HSM package does (the check is not vacuous)
    assert any(imp.name == "pkcs11" for imp in known["paywarden.hsm.token"].imports()), (
        "paywarden.hsm.token no longer imports pkcs11: update this test"
    )


def _is_grpc(name: str) -> bool:
    top = name.split(".")[0]
    return top == "grpc" or top.startswith("grpc_") or name.split(".")[-1].endswith("_pb2_grpc")


def test_only_the_grpc_edge_and_the_command_lines_import_grpc() -> None:
    known = modules()
    bad = [
        _where(module, imp)
        for name, module in known.items()
        if not any(name == layer or name.startswith(f"{layer}.") for layer in GRPC_LAYERS)
        for imp in module.imports()
        if _is_grpc(imp.name)
    ]
    assert not bad, bad
    assert any(_is_grpc(imp.name) for imp in known["paywarden.signer.api.server"].imports())


def part_of(module: str) -> tuple[int, str]:
    """(layer, part) of a module: the part in ``LAYERS`` with the longest matching name."""
    found = [
        (len(part), layer, part)
        for layer, parts in enumerate(LAYERS)
        for part in parts
        if module == part or module.startswith(f"{part}.")
    ]
    assert found, f"{module} is in no layer: add its package to LAYERS"
    _, layer, part = max(found)
    return layer, part


def layer_breaches(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every edge from a module to a higher layer, or to another part of its own layer."""
    bad = []
    for name, edges in sorted(graph.items()):
        layer, part = part_of(name)
        for target, line in edges.items():
            target_layer, target_part = part_of(target)
            if target_layer > layer or (target_layer == layer and target_part != part):
                bad.append(f"{name} ({part}, line {line}) imports {target} ({target_part})")
    return bad


def test_the_layer_table_places_modules_by_their_longest_prefix() -> None:
    assert part_of("paywarden.policy.vocabulary") == (0, "paywarden.policy.vocabulary")
    assert part_of("paywarden.policy.rules") == (1, "paywarden.policy")
    assert part_of("paywarden.signer.deadlines") == (2, "paywarden.signer")
    assert part_of("paywarden.signer.core") == (5, "paywarden.signer.core")
    assert part_of("paywarden.signer.cli.commands") == (7, "paywarden.signer.cli")
    graph = {
        "paywarden.signer.store.sqlite": {"paywarden.signer.core.deps": 3},
        "paywarden.hsm.token": {"paywarden.policy.rules": 4},
        "paywarden.policy.vocabulary": {"paywarden.policy.rules": 5},
        "paywarden.signer.core.signing": {
            "paywarden.signer.store.records": 6,
            "paywarden.signer.core.deps": 7,
            "paywarden.signer.deadlines": 8,
            "paywarden.policy.vocabulary": 9,
        },
    }
    assert [b.split(" ")[0] for b in layer_breaches(graph)] == [
        "paywarden.hsm.token",
        "paywarden.policy.vocabulary",
        "paywarden.signer.store.sqlite",
    ]


def test_every_module_imports_only_its_own_layer_or_layers_below() -> None:
    known = modules()
    for name in known:
        part_of(name)  # every module has a layer
    bad = layer_breaches(import_graph(known))
    assert not bad, "imports against the layers (LAYERS, lowest first):\n" + "\n".join(bad)


def test_of_the_command_lines_only_serve_imports_the_grpc_edge() -> None:
    known = modules()
    importers = sorted(
        name
        for name, edges in import_graph(known).items()
        if part_of(name)[1] == "paywarden.signer.cli"
        and any(part_of(target)[1] == "paywarden.signer.api" for target in edges)
    )
    assert importers == sorted(CLI_MODULES_STARTING_THE_SERVER)


def oversized_modules() -> dict[str, int]:
    """The modules of ``paywarden.signer`` over ``MAX_LINES`` lines, with their length."""
    sizes = {
        name: len(module.source.splitlines())
        for name, module in modules().items()
        if name == "paywarden.signer" or name.startswith("paywarden.signer.")
    }
    return {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}


def test_no_module_of_the_signer_is_over_400_lines() -> None:
    oversized = oversized_modules()
    assert not oversized, f"split these modules (over {MAX_LINES} lines): {oversized}"


# SQL as the store writes it: statements open with an upper-case keyword.
_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN)\b")
_SQL_DRIVERS = ("sqlite3", "sqlite_utils", "psycopg", "psycopg2", "sqlalchemy")


def sql_outside_the_store(known: dict[str, Module]) -> list[str]:
    """Where a module outside ``paywarden.signer.store`` imports a database driver or
    holds a string that is an SQL statement."""
    found = []
    for name, module in known.items():
        if name == "paywarden.signer.store" or name.startswith("paywarden.signer.store."):
            continue
        found += [
            _where(module, imp)
            for imp in module.imports()
            if imp.name.split(".")[0] in _SQL_DRIVERS
        ]
        for node in ast.walk(ast.parse(module.source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _SQL.match(node.value):
                    found.append(f"{name}:{node.lineno} {node.value.strip()[:40]!r}")
    return found


def test_the_sql_check_finds_a_driver_and_a_statement(tmp_path: Path) -> None:
    path = tmp_path / "leaky.py"
    path.write_text('import sqlite3\nQ = "SELECT seq FROM audit_log"\nNOTE = "select a payee"\n')
    found = sql_outside_the_store({"paywarden.signer.core.leaky": Module("x", path, False)})
    assert found == [
        "x (line 1) imports sqlite3",
        "paywarden.signer.core.leaky:2 'SELECT seq FROM audit_log'",
    ]


def test_no_sql_outside_the_store_package() -> None:
    known = modules()
    assert not sql_outside_the_store(known)
    # and the store does hold SQL (the check is not vacuous)
    assert sql_outside_the_store({"x": known["paywarden.signer.store.sqlite_tx"]})
