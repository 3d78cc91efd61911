"""What the command groups share (``commands``, ``audit``, ``keys``): the configuration
named by ``--config``, a key id argument, and an exit with a message and a status code."""

from __future__ import annotations

import argparse

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
