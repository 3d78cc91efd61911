"""Configuration: defaults, environment overrides, validation errors that name the setting,
path resolution, and the real CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paywarden.signer.config_file import ConfigError, load_config

from tests.support.cli import paywarden, settings_free_env

ROOT = Path(__file__).resolve().parent.parent


def _write_file(directory: Path, text: str, name: str = "paywarden.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ----------------------------------------------------------------------


def test_defaults_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={})
    assert cfg.server.listen == "127.0.0.1:50051"
    assert cfg.server.trust_domain == "paywarden.local"
    assert cfg.limits.max_expiry_seconds == 300
    assert cfg.limits.max_session_ttl_seconds == 86_400
    assert set(cfg.assets) == {"USD", "EUR"}
    assert cfg.assets["USD"].decimals == 2
    assert [ref.key_id for ref in cfg.key_refs()] == ["payments.v1"]
    assert cfg.hsm.pin_env is None
    # Relative defaults resolve against the working directory when there is no file.
    base = Path.cwd()
    assert cfg.hsm.pin_file == base / "data" / "dev" / "DEVELOPMENT-ONLY-user.pin"
    assert cfg.store.path == base / "data" / "paywarden.db"
    assert cfg.server.client_ca == base / "data" / "pki" / "ca.crt"
    assert cfg.hsm.softhsm_conf == base / "softhsm.conf"


def test_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = _write_file(tmp_path, "[limits]\nmax_expiry_seconds = 120\n")
    cfg = load_config(path, environ={})
    assert cfg.limits.max_expiry_seconds == 120
    assert cfg.limits.max_session_ttl_seconds == 86_400
    assert cfg.server.listen == "127.0.0.1:50051"


# -- environment overrides -------------------------------------------------------------


def test_env_override_changes_limit(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS": "60"})
    assert cfg.limits.max_expiry_seconds == 60
    assert type(cfg.limits.max_expiry_seconds) is int


def test_env_override_beats_file(tmp_path: Path) -> None:
    path = _write_file(
        tmp_path, '[limits]\nmax_expiry_seconds = 120\n[server]\nlisten = "[::1]:1"\n'
    )
    environ = {
        "PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS": "45",
        "PAYWARDEN_SERVER__LISTEN": "0.0.0.0:7443",  # not a TOML literal: read as a string
    }
    cfg = load_config(path, environ=environ)
    assert cfg.limits.max_expiry_seconds == 45
    assert cfg.server.listen == "0.0.0.0:7443"


def test_env_pin_env_replaces_default_pin_file() -> None:
    cfg = load_config(None, environ={"PAYWARDEN_HSM__PIN_ENV": "X"})
    assert cfg.hsm.pin_env == "X"
    assert cfg.hsm.pin_file is None


def test_env_ignores_unrelated_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"HOME": "/nowhere", "PAYWARDEN_DEBUG": "1", "XPAYWARDEN_SERVER__LISTEN": "bad"}
    assert load_config(None, environ=environ) == load_config(None, environ={})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS", "0", "limits.max_expiry_seconds"),
        ("PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS", "sixty", "limits.max_expiry_seconds"),
        ("PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS", "60.0", "limits.max_expiry_seconds"),
        ("PAYWARDEN_SERVER__LISTN", "127.0.0.1:1", "server.listn"),
        ("PAYWARDEN_SERVER__LISTEN", "nowhere", "server.listen"),
        ("PAYWARDEN_SERVR__LISTEN", "127.0.0.1:1", "servr"),
        ("PAYWARDEN_SERVER__", "x", "PAYWARDEN_SERVER__"),
        ("PAYWARDEN_SERVER__LISTEN__PORT", "1", "server.listen"),  # listen is not a section
    ],
)
def test_env_errors_name_the_setting(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={name: value})
    assert expected in str(info.value)


def test_env_pin_env_with_explicit_pin_file_in_file_is_refused(tmp_path: Path) -> None:
    path = _write_file(tmp_path, '[hsm]\npin_file = "user.pin"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"PAYWARDEN_HSM__PIN_ENV": "PIN"})
    assert "hsm.pin_env" in str(info.value)


# -- file errors name the setting ------------------------------------------------------

BAD_FILES = {
    "unknown-field": ('[server]\nlistn = "x"\n', ["setting server.listn"]),
    "unknown-section": ("[surprise]\nx = 1\n", ["setting surprise"]),
    "wrong-type-str-for-int": (
        '[limits]\nmax_expiry_seconds = "60"\n',
        ["setting limits.max_expiry_seconds"],
    ),
    "wrong-type-bool-for-int": ("[server]\nmax_workers = true\n", ["setting server.max_workers"]),
    "wrong-type-float-for-int": (
        "[limits]\nmax_expiry_seconds = 60.0\n",
        ["setting limits.max_expiry_seconds"],
    ),
    "out-of-range": ("[limits]\nmax_expiry_seconds = 0\n", ["setting limits.max_expiry_seconds"]),
    "listen-no-port": ('[server]\nlisten = "localhost"\n', ["setting server.listen"]),
    "listen-no-host": ('[server]\nlisten = ":50051"\n', ["setting server.listen"]),
    "listen-port-too-big": ('[server]\nlisten = "127.0.0.1:65536"\n', ["setting server.listen"]),
    "listen-port-name": ('[server]\nlisten = "127.0.0.1:http"\n', ["setting server.listen"]),
    "listen-port-non-ascii-digits": (
        '[server]\nlisten = "127.0.0.1:\u0665\u0660\u0660\u0665\u0661"\n',
        ["setting server.listen"],
    ),
    "max-amount-zero": (
        '[assets.USD]\ndecimals = 2\nmax_amount = "0"\n',
        ["assets.USD.max_amount"],
    ),
    "listen-wrong-type": ("[server]\nlisten = 50051\n", ["setting server.listen"]),
    "trust-domain": ('[server]\ntrust_domain = "Pay Warden"\n', ["setting server.trust_domain"]),
    "both-pin-sources": (
        '[hsm]\npin_file = "user.pin"\npin_env = "PIN"\n',
        ["setting hsm", "hsm.pin_file", "hsm.pin_env"],
    ),
    "pin-file-wrong-type": ("[hsm]\npin_file = false\n", ["setting hsm.pin_file"]),
    "empty-keys": ("keys = []\n", ["setting keys", "at least one payment key"]),
    "bad-key-label": ('[[keys]]\nlabel = "Payments"\nversion = 1\n', ["setting keys.0", "label"]),
    "bad-key-version": ('[[keys]]\nlabel = "payments"\nversion = 0\n', ["setting keys.0.version"]),
    "duplicate-key": (
        '[[keys]]\nlabel = "p"\nversion = 1\n[[keys]]\nlabel = "p"\nversion = 1\n',
        ["setting keys", "twice"],
    ),
    "no-assets": ("assets = {}\n", ["setting assets", "at least one asset"]),
    "lowercase-asset-code": ("[assets.usd]\ndecimals = 2\n", ["setting assets", "'usd'"]),
    "asset-code-too-long": ("[assets.ABCDEFGHIJKLM]\ndecimals = 2\n", ["ABCDEFGHIJKLM"]),
    "negative-decimals": ("[assets.USD]\ndecimals = -1\n", ["setting assets.USD.decimals"]),
    "too-many-decimals": ("[assets.USD]\ndecimals = 19\n", ["setting assets.USD.decimals"]),
    "missing-decimals": ('[assets.USD]\nmax_amount = "5"\n', ["setting assets.USD.decimals"]),
    # A limit that parse_amount cannot read must be refused at load time, not on the first
    # payment in that asset.
    "max-amount-not-a-number": (
        '[assets.USD]\ndecimals = 2\nmax_amount = "lots"\n',
        ["setting assets.USD.max_amount"],
    ),
    "max-amount-too-precise": (
        '[assets.USD]\ndecimals = 2\nmax_amount = "1.005"\n',
        ["setting assets.USD.max_amount"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_file_errors_name_the_setting(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    path = _write_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    for part in expected:
        assert part in message, message


def test_not_toml_names_the_file(tmp_path: Path) -> None:
    path = _write_file(tmp_path, "[server\nlisten = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


# -- path resolution ---------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute_key = tmp_path / "abs" / "server.key"
    path = _write_file(
        tmp_path / "etc" / "paywarden",
        "[server]\n"
        'tls_cert = "pki/server.crt"\n'
        f'tls_key = "{absolute_key}"\n'
        "[hsm]\n"
        'pin_file = "../secret/user.pin"\n'
        'softhsm_conf = "softhsm2.conf"\n'
        "[store]\n"
        'path = "state/paywarden.db"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "etc" / "paywarden" / "paywarden.toml", environ={})
    base = path.resolve().parent
    assert cfg.server.tls_cert == base / "pki" / "server.crt"
    assert cfg.server.tls_key == absolute_key
    assert cfg.hsm.pin_file == base / ".." / "secret" / "user.pin"
    assert cfg.hsm.softhsm_conf == base / "softhsm2.conf"
    assert cfg.store.path == base / "state" / "paywarden.db"
    # Defaults the file does not mention also follow the file, not the working directory.
    assert cfg.server.client_ca == base / "data" / "pki" / "ca.crt"
    for p in (cfg.server.tls_cert, cfg.hsm.pin_file, cfg.store.path, cfg.server.client_ca):
        assert p is not None and p.is_absolute()
        assert elsewhere not in p.parents


def test_env_paths_resolve_against_the_file_directory(tmp_path: Path) -> None:
    path = _write_file(tmp_path / "conf", "")
    cfg = load_config(path, environ={"PAYWARDEN_STORE__PATH": "db/x.db"})
    assert cfg.store.path == path.resolve().parent / "db" / "x.db"


# -- the real CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "config"])
def test_cli_bad_config_exits_2_naming_the_setting(tmp_path: Path, command: str) -> None:
    bad = _write_file(tmp_path, '[server]\nlistn = "x"\n')
    proc = paywarden(command, "--config", str(bad), env=settings_free_env())
    assert proc.returncode == 2, proc.stderr
    assert "server.listn" in proc.stderr
    assert "server.listn" not in proc.stdout


def test_cli_serve_bad_env_override_exits_2(tmp_path: Path) -> None:
    good = _write_file(tmp_path, "[limits]\nmax_expiry_seconds = 120\n")
    proc = paywarden(
        "serve",
        "--config",
        str(good),
        env=settings_free_env({"PAYWARDEN_LIMITS__MAX_EXPIRY_SECONDS": "0"}),
    )
    assert proc.returncode == 2, proc.stderr
    assert "limits.max_expiry_seconds" in proc.stderr


def test_cli_config_good_file_exits_0(tmp_path: Path) -> None:
    good = _write_file(
        tmp_path,
        '[limits]\nmax_expiry_seconds = 120\n[store]\npath = "state/pw.db"\n'
        '[assets.BTC]\ndecimals = 8\nmax_amount = "21"\n',
    )
    proc = paywarden("config", "--config", str(good), env=settings_free_env())
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["limits"]["max_expiry_seconds"] == 120
    assert shown["assets"] == {
        "BTC": {"decimals": 8, "max_amount": "21", "case_insensitive_payees": False, "x402": None}
    }
    assert Path(shown["store"]["path"]) == good.resolve().parent / "state" / "pw.db"


def test_env_override_keeps_the_case_of_asset_codes() -> None:
    cfg = load_config(
        None,
        {
            "PAYWARDEN_ASSETS__USD__DECIMALS": "2",
            "PAYWARDEN_ASSETS__USD__MAX_AMOUNT": '"5000"',
        },
    )
    assert cfg.assets["USD"].max_amount == "5000"
    assert "usd" not in cfg.assets
