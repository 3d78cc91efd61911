"""The layers' import rules, read from the source rather than from what happens to be loaded.

Every module of ``paywarden.signer``, ``paywarden.policy`` and ``paywarden.hsm`` is imported
(a module that no longer imports fails here first) and its source parsed with :mod:`ast`: each
``import`` and ``from ... import``, at module level or inside a function, is an edge of the
import graph. The rules (docs/architecture.md states them in words):

- no import cycle between modules;
- ``paywarden.policy`` is pure: it imports nothing from ``paywarden.signer`` or ``paywarden.hsm``;
- only ``paywarden.hsm`` imports python-pkcs11;
- only the gRPC edge (``paywarden.signer.api``) and the command lines (``paywarden.signer.cli``)
  import gRPC (``grpc``, ``grpc_*`` and the generated ``*_pb2_grpc`` stubs).

The last three are about a module's own import statements, not what those modules import in
turn; the cycle rule follows the whole graph.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("paywarden.signer", "paywarden.policy", "paywarden.hsm")
GRPC_LAYERS = ("paywarden.signer.api", "paywarden.signer.cli")


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
