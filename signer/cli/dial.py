"""What the human-facing commands share: dialling the signer over mutual TLS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

DEFAULT_PKI = Path("data/pki")


def add_connection_arguments(parser: argparse.ArgumentParser, identity: str) -> None:
    """--addr/--ca/--cert/--key/--server-name; ``identity`` names the dev certificate."""
    parser.add_argument("--addr", default="127.0.0.1:50051", help="signer address")
    parser.add_argument("--ca", type=Path, default=DEFAULT_PKI / "ca.crt")
    parser.add_argument("--cert", type=Path, default=DEFAULT_PKI / f"{identity}.crt")
    parser.add_argument("--key", type=Path, default=DEFAULT_PKI / f"{identity}.key")
    parser.add_argument(
        "--server-name", default="localhost", help="name the server certificate is checked for"
    )


def call(
    args: argparse.Namespace,
    stub_class: Callable[[grpc.Channel], Any],
    command: Callable[[Any, argparse.Namespace], int],
) -> int:
    """Runs ``command(stub, args)``; an RPC error is printed with its status, exit 1."""
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=args.ca.read_bytes(),
            private_key=args.key.read_bytes(),
            certificate_chain=args.cert.read_bytes(),
        )
    except OSError as exc:
        print(f"paywarden: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.addr, creds, options=options) as channel:
        try:
            return command(stub_class(channel), args)
        except grpc.RpcError as err:
            print(f"paywarden: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
