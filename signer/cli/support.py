"""What the command groups share (``commands``, ``audit``, ``keys``, ``report``, ...):
the configuration named by ``--config``, a key id argument, the audit public keys of
``--public-key`` options, and an exit with a message and a status code."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm import KeyRef
from paywarden.signer.config import Config
from paywarden.signer.config_file import ConfigError, load_config


class CliExit(Exception):
    """Ends a command: ``main`` prints the message and exits with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliExit(2, f"invalid configuration: {exc}") from None


def key_argument(text: str) -> KeyRef:
    """An argparse ``type``: a key id ``<label>.v<N>``, or the parser's own error."""
    try:
        return KeyRef.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def public_keys(paths: list[Path]) -> list[ec.EllipticCurvePublicKey]:
    """The audit public keys (PEM, EC) of ``--public-key`` options; one that cannot be
    read is a usage error (exit 2), found before anything else is read."""
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise CliExit(2, f"cannot read public key {path}: {exc.strerror}") from None
        except ValueError:
            raise CliExit(2, f"--public-key {path} holds no PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CliExit(2, f"--public-key {path} is not an EC public key")
        keys.append(key)
    return keys
