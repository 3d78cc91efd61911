"""docs/policy-packs.md cannot fall behind the pack models: every example pack in it loads
and compiles with the signer's own loader (and every refused one is refused for the reason
it gives), every field of the pydantic pack models is documented and set by some example,
and every rule the compiler emits is in the table of rules."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from paywarden.policy import PackError, compile_all, compile_pack
from paywarden.policy.packs import PolicyPack, PolicyPackModel, build_pack_set, parse_pack
from paywarden.signer.config import Config
from pydantic import BaseModel

from tests.helpers import ROOT

PACK_DOC = ROOT / "docs" / "policy-packs.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _pack_doc_toml_blocks() -> list[str]:
    text = PACK_DOC.read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == "toml"]


def _pack_doc_config() -> Config:
    """The signer configuration the doc's packs are written against (its config blocks)."""
    merged: dict[str, typing.Any] = {}
    for body in _pack_doc_toml_blocks():
        if body.startswith("# signer configuration"):
            for section, value in tomllib.loads(body).items():
                if isinstance(value, dict) and isinstance(merged.get(section), dict):
                    merged[section].update(value)
                else:
                    merged[section] = value
    assert merged, "the doc shows no signer configuration"
    return Config.model_validate(merged)


def _load_doc_pack(body: str) -> PolicyPack:
    name = body.splitlines()[0].split(":", 1)[-1].strip()
    config = _pack_doc_config()
    pack = parse_pack(body.encode("utf-8"), Path(name))
    compile_all([pack], config.asset_table())
    build_pack_set([pack], config.groups)
    return pack


def _pack_doc_packs() -> list[PolicyPack]:
    return [_load_doc_pack(b) for b in _pack_doc_toml_blocks() if b.startswith("# pack: ")]


def _field_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field of ``model`` and of the models inside it, as the doc names them:
    ``assets.<ASSET>.keys``, ``assets.<ASSET>.approval_tiers[].above``."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        for suffix, inner in _models_in(info.annotation):
            yield from _field_paths(inner, f"{path}{suffix}.")


def _models_in(annotation: typing.Any) -> list[tuple[str, type[BaseModel]]]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    if origin is list:
        return [("[]", m) for _, m in _models_in(args[0])]
    if origin is dict:
        return [(".<ASSET>", m) for _, m in _models_in(args[1])]
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _models_in(arg)]
    if origin is typing.Annotated:
        return _models_in(args[0])
    return []


def _fields_set(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """The paths of the fields a loaded pack's file sets (defaults left out)."""
    for name in model.model_fields_set:
        path = f"{prefix}{name}"
        yield path
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _fields_set(value, f"{path}.")
        elif isinstance(value, dict):
            for inner in value.values():
                if isinstance(inner, BaseModel):
                    yield from _fields_set(inner, f"{path}.<ASSET>.")
        elif isinstance(value, list):
            for inner in value:
                if isinstance(inner, BaseModel):
                    yield from _fields_set(inner, f"{path}[].")


def test_every_toml_block_is_a_labelled_pack_or_configuration() -> None:
    labels = ("# pack: ", "# refused: ", "# signer configuration")
    blocks = _pack_doc_toml_blocks()
    assert len(blocks) >= 8
    assert [b.splitlines()[0] for b in blocks if not b.startswith(labels)] == []


def test_every_example_pack_loads_and_compiles_with_the_real_loader() -> None:
    packs = _pack_doc_packs()
    assert len(packs) >= 4
    # Their ids are distinct and no agent is claimed twice: they can share one directory.
    config = _pack_doc_config()
    build_pack_set(packs, config.groups)


@pytest.mark.parametrize(
    "body",
    [b for b in _pack_doc_toml_blocks() if b.startswith("# refused: ")],
    ids=lambda b: b.splitlines()[0].removeprefix("# refused: ")[:40],
)
def test_every_refused_example_is_refused_for_the_reason_it_gives(body: str) -> None:
    expected = body.splitlines()[0].removeprefix("# refused: ").strip()
    with pytest.raises(PackError) as refused:
        _load_doc_pack(body)
    assert expected in str(refused.value)


def test_the_loader_checks_what_the_doc_says_it_checks() -> None:
    """A doc pack with one field misspelt is refused: the examples are not loaded leniently."""
    body = next(b for b in _pack_doc_toml_blocks() if b.startswith("# pack: minimal.toml"))
    with pytest.raises(PackError, match="max_per_paymnt"):
        _load_doc_pack(body.replace("max_per_payment", "max_per_paymnt"))


def test_every_field_of_the_pack_models_is_documented() -> None:
    text = PACK_DOC.read_text(encoding="utf-8")
    paths = list(_field_paths(PolicyPackModel))
    assert "assets.<ASSET>.approval_tiers[].approvers" in paths
    assert "breaker.min_decisions" in paths
    assert [p for p in paths if f"| `{p}` |" not in text] == []


def test_every_field_of_the_pack_models_is_set_by_an_example() -> None:
    shown = {path for pack in _pack_doc_packs() for path in _fields_set(pack.model)}
    assert sorted(set(_field_paths(PolicyPackModel)) - shown) == []


def test_the_rule_table_names_every_rule_the_compiler_emits() -> None:
    text = PACK_DOC.read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    assets = _pack_doc_config().asset_table()
    emitted = {rule.name for pack in _pack_doc_packs() for rule in compile_pack(pack, assets).rules}
    assert {"velocity", "allowed_hours", "plan_line", "approval_threshold"} <= emitted
    assert emitted - table == set()
    assert {"circuit_breaker"} <= table
