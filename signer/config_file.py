"""Reading the configuration: a TOML file, then environment overrides.

An override is ``PAYWARDEN_<SECTION>__<KEY>=<value>`` (``PAYWARDEN_SERVER__LISTEN``);
the value is read as a TOML literal when it is one (``300``, ``true``,
``["a"]``), otherwise as a string. Every error names the setting.
Relative paths are resolved against the directory of the config file (or the
working directory for the embedded defaults).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paywarden.signer.config import Config
from pydantic import ValidationError

ENV_PREFIX = "PAYWARDEN_"


class ConfigError(Exception):
    """The configuration is wrong; the message names the setting."""


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        raw_path = name[len(ENV_PREFIX) :].split("__")
        # Section and setting names are lowercase; asset codes keep their case.
        path = [
            p if i > 0 and raw_path[i - 1].lower() in ("assets", "groups") else p.lower()
            for i, p in enumerate(raw_path)
        ]
        if any(not p for p in path):
            raise ConfigError(f"environment variable {name}: malformed setting path")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
            node = child
        node[path[-1]] = _env_value(raw)


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return base / path


def _resolve_paths(cfg: Config, base: Path) -> Config:
    return cfg.model_copy(
        update={
            "server": cfg.server.model_copy(
                update={
                    "tls_cert": _resolve(cfg.server.tls_cert, base),
                    "tls_key": _resolve(cfg.server.tls_key, base),
                    "client_ca": _resolve(cfg.server.client_ca, base),
                    "crl_file": _resolve(cfg.server.crl_file, base),
                }
            ),
            "hsm": cfg.hsm.model_copy(
                update={
                    "pin_file": _resolve(cfg.hsm.pin_file, base),
                    "softhsm_conf": _resolve(cfg.hsm.softhsm_conf, base),
                }
            ),
            "store": cfg.store.model_copy(
                update={
                    "path": _resolve(cfg.store.path, base),
                    "password_file": _resolve(cfg.store.password_file, base),
                }
            ),
            "policy": cfg.policy.model_copy(update={"dir": _resolve(cfg.policy.dir, base)}),
        }
    )


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"setting {loc}: {err['msg']}")
    return "; ".join(lines)


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Loads and validates the configuration; raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        base = path.resolve().parent
    _apply_env(data, environ)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return _resolve_paths(cfg, base)
