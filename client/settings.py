"""Where the signer is and which certificate to present: from arguments or the environment.

``PAYWARDEN_ADDR`` (host:port), ``PAYWARDEN_CA`` (the CA that issued the signer's certificate),
``PAYWARDEN_CERT`` and ``PAYWARDEN_KEY`` (this client's certificate and key, PEM) and,
optionally, ``PAYWARDEN_SERVER_NAME`` (the name the signer's certificate is checked for, when it
is not the host of the address: the development certificate is issued for ``localhost``).
An argument wins over its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from paywarden.client.errors import SettingsError

ENV_ADDR = "PAYWARDEN_ADDR"
ENV_CA = "PAYWARDEN_CA"
ENV_CERT = "PAYWARDEN_CERT"
ENV_KEY = "PAYWARDEN_KEY"
ENV_SERVER_NAME = "PAYWARDEN_SERVER_NAME"

ChannelOptions = list[tuple[str, str | int]]


@dataclass(frozen=True)
class Credentials:
    """The PEM bytes read from the settings' files."""

    ca: bytes
    cert: bytes
    key: bytes

    def __repr__(self) -> str:  # never print a private key
        return "Credentials(ca=…, cert=…, key=<hidden>)"


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach the signer over mutual TLS."""

    addr: str
    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        addr: str | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> ConnectionSettings:
        """The settings from arguments, each missing one from its ``PAYWARDEN_*`` variable
        (``environ`` defaults to ``os.environ``). :class:`SettingsError` names every setting
        that is missing from both."""
        env = os.environ if environ is None else environ
        given: dict[str, str | Path | None] = {
            ENV_ADDR: addr,
            ENV_CA: ca,
            ENV_CERT: cert,
            ENV_KEY: key,
        }
        values = {name: value or env.get(name) or None for name, value in given.items()}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise SettingsError(
                "missing connection settings: " + ", ".join(missing) + " (argument or variable)"
            )
        return cls(
            addr=str(values[ENV_ADDR]),
            ca=Path(str(values[ENV_CA])),
            cert=Path(str(values[ENV_CERT])),
            key=Path(str(values[ENV_KEY])),
            server_name=server_name or env.get(ENV_SERVER_NAME) or None,
        )

    def read(self) -> Credentials:
        """The three PEM files' bytes; :class:`SettingsError` names a file that cannot be read
        or is empty (and never prints its contents)."""
        return Credentials(
            ca=_read(self.ca, "CA certificate"),
            cert=_read(self.cert, "client certificate"),
            key=_read(self.key, "client key"),
        )

    def options(self) -> ChannelOptions:
        """The channel options: the server-name override, when set."""
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials from the settings' files."""
        pem = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert
        )

    def channel(self) -> grpc.Channel:
        """A new blocking channel to the signer (the caller closes it)."""
        return grpc.secure_channel(self.addr, self.channel_credentials(), options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        """A new asyncio channel to the signer (the caller closes it)."""
        return grpc.aio.secure_channel(
            self.addr, self.channel_credentials(), options=self.options()
        )


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise SettingsError(f"the {what} {path} is empty")
    return data
