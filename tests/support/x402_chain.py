"""A local stand-in for one EVM chain holding one EIP-3009 token, answering exactly
what the x402 SDK's exact-EVM facilitator verification asks of a chain (there is no
chain in the tests). Its ``transferWithAuthorization`` check is the token's own
(FiatTokenV2's rules: the window, the nonce unused, the signer recovered from the
EIP-712 digest, the balance), computed with eth-account and eth-keys, never with
our encoder; a failure is raised as the revert text the SDK maps to its reasons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from eth_account.messages import encode_typed_data
from eth_keys.datatypes import Signature
from eth_utils.crypto import keccak
from paywarden.hsm.eip712 import Eip712Domain
from x402.mechanisms.evm.types import TransactionReceipt, TypedDataDomain, TypedDataField

from tests.support.evm import typed_data_of

FACILITATOR = "0x000000000000000000000000000000000000fAC1"
_CODE = bytes.fromhex("6080604052")  # any non-empty bytecode: "a contract is deployed here"
# secp256k1's n / 2: a token built on OpenZeppelin's ECDSA refuses a larger s (EIP-2).
_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class Reverted(Exception):
    """What ``eth_call`` raises when the contract reverts."""


class LocalEip3009Chain:
    """One chain, one token (``domain``), balances per address, a clock."""

    def __init__(
        self,
        domain: Eip712Domain,
        balances: dict[str, int],
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        self.domain = domain
        self.balances = {address.lower(): value for address, value in balances.items()}
        self.used: set[tuple[str, bytes]] = set()
        self._clock = clock

    # -- what the facilitator reads --------------------------------------------------

    def get_addresses(self) -> list[str]:
        return [FACILITATOR]

    def get_chain_id(self) -> int:
        return self.domain.chain_id

    def get_code(self, address: str) -> bytes:
        return _CODE if address.lower() == self.domain.verifying_contract.lower() else b""

    def get_balance(self, address: str, token_address: str) -> int:
        return self.balances.get(address.lower(), 0)

    def read_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any
    ) -> Any:
        if address.lower() != self.domain.verifying_contract.lower():
            raise Reverted("execution reverted: no contract at this address")
        if function_name == "transferWithAuthorization":
            self._check_transfer(*args)
            return None
        if function_name == "authorizationState":
            return (args[0].lower(), bytes(args[1])) in self.used
        if function_name == "balanceOf":
            return self.balances.get(args[0].lower(), 0)
        if function_name == "name":
            return self.domain.name
        if function_name == "version":
            return self.domain.version
        raise NotImplementedError(f"the local chain has no {function_name}")

    # -- what verification never asks (settling would: there is no chain to settle on) --

    def verify_typed_data(
        self,
        address: str,
        domain: TypedDataDomain,
        types: dict[str, list[TypedDataField]],
        primary_type: str,
        message: dict[str, Any],
        signature: bytes,
    ) -> bool:
        raise NotImplementedError("the facilitator recovers EOA signatures itself")

    def write_contract(
        self,
        address: str,
        abi: list[dict[str, Any]],
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        raise NotImplementedError("the local chain settles nothing")

    def send_transaction(self, to: str, data: bytes) -> str:
        raise NotImplementedError("the local chain settles nothing")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        raise NotImplementedError("the local chain settles nothing")

    # -- what the tests do to it -----------------------------------------------------------

    def spend(self, from_address: str, nonce: bytes) -> None:
        """Marks an authorisation's nonce used, as a settled transfer does."""
        self.used.add((from_address.lower(), nonce))

    def _check_transfer(
        self,
        from_address: str,
        to: str,
        value: int,
        valid_after: int,
        valid_before: int,
        nonce: bytes,
        v: int,
        r: bytes,
        s: bytes,
    ) -> None:
        now = self._clock()
        if now <= valid_after:
            raise Reverted("execution reverted: FiatTokenV2: authorization is not yet valid")
        if now >= valid_before:
            raise Reverted("execution reverted: FiatTokenV2: authorization is expired")
        if (from_address.lower(), bytes(nonce)) in self.used:
            raise Reverted("execution reverted: FiatTokenV2: authorization is used or canceled")
        if int.from_bytes(s, "big") > _HALF_N or v not in (27, 28):
            raise Reverted("execution reverted: ECRecover: invalid signature 's' or 'v' value")
        message = {"from": from_address, "to": to, "value": value, "validAfter": valid_after,
                   "validBefore": valid_before, "nonce": bytes(nonce)}  # fmt: skip
        encoded = encode_typed_data(full_message=typed_data_of(self.domain, message))
        digest = keccak(b"\x19" + encoded.version + encoded.header + encoded.body)
        vrs = (v - 27, int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        signer = Signature(vrs=vrs).recover_public_key_from_msg_hash(digest)
        if signer.to_checksum_address().lower() != from_address.lower():
            raise Reverted("execution reverted: FiatTokenV2: invalid signature")
        if self.balances.get(from_address.lower(), 0) < value:
            raise Reverted("execution reverted: ERC20: transfer amount exceeds balance")


TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()


class SettlingEip3009Chain(LocalEip3009Chain):
    """The same chain, which also settles: ``transferWithAuthorization`` sent as a
    transaction runs the token's checks, marks the nonce used and moves the balance, in
    one step under a lock (a nonce is settled once however many callers race), and its
    receipt carries the ERC-20 ``Transfer`` event the facilitator looks for."""

    def __init__(
        self,
        domain: Eip712Domain,
        balances: dict[str, int],
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        super().__init__(domain, balances, clock)
        self._lock = threading.Lock()
        self.receipts: dict[str, TransactionReceipt] = {}
        """Transaction hash -> receipt, one per settled transfer."""

    def read_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any
    ) -> Any:
        with self._lock:
            return super().read_contract(address, abi, function_name, *args)

    def write_contract(
        self,
        address: str,
        abi: list[dict[str, Any]],
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        if function_name != "transferWithAuthorization" or len(args) != 9:
            raise NotImplementedError(f"the local chain settles no {function_name}")
        if address.lower() != self.domain.verifying_contract.lower():
            raise Reverted("execution reverted: no contract at this address")
        from_address, to, value, _after, _before, nonce = args[:6]
        with self._lock:
            self._check_transfer(*args)
            self.used.add((from_address.lower(), bytes(nonce)))
            self.balances[from_address.lower()] -= value
            self.balances[to.lower()] = self.balances.get(to.lower(), 0) + value
            count = len(self.receipts).to_bytes(8, "big")
            tx_hash = "0x" + keccak(b"tx" + count + bytes(nonce)).hex()
            self.receipts[tx_hash] = TransactionReceipt(
                status=1,
                block_number=len(self.receipts) + 1,
                tx_hash=tx_hash,
                logs=[_transfer_log(self.domain.verifying_contract, from_address, to, value)],
            )
        return tx_hash

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        with self._lock:
            return self.receipts[tx_hash]


def _transfer_log(token: str, from_address: str, to: str, value: int) -> dict[str, Any]:
    """The ERC-20 ``Transfer(from, to, value)`` event as an RPC node returns a log."""

    def topic(address: str) -> str:
        return "0x" + "00" * 12 + address.lower().removeprefix("0x")

    return {
        "address": token,
        "topics": [TRANSFER_TOPIC, topic(from_address), topic(to)],
        "data": "0x" + value.to_bytes(32, "big").hex(),
    }
