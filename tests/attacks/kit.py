"""What the attack tests share, written once instead of once per module.

The values a test cares about (budget, payee, amount, expiry) stay at the call site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from paywarden.v1 import sessions_pb2_grpc, signer_pb2_grpc

Dial = Callable[[str, str], grpc.Channel]
"""(role, principal) -> a channel that presents that principal's certificate."""


@dataclass
class Api:
    """planner-1's Sessions stub and agent-1's Signer stub."""

    planner: sessions_pb2_grpc.SessionsStub
    signer: signer_pb2_grpc.SignerStub
