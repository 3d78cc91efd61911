"""The operator's client: the kill switch, revoked identities, the audit log, policy reloads."""

from __future__ import annotations

import json
from typing import Any, Literal

from paywarden.client import _calls as rpc
from paywarden.client._connection import Connection
from paywarden.v1 import control_pb2

Scope = Literal["global", "agent", "session", "key"]
"""What a freeze applies to: every Sign, one agent, one session or one payment key."""

_SCOPES: dict[Scope, control_pb2.FreezeScope] = {
    "global": control_pb2.GLOBAL,
    "agent": control_pb2.AGENT,
    "session": control_pb2.SESSION,
    "key": control_pb2.KEY,
}


def _scope(scope: Scope) -> control_pb2.FreezeScope:
    try:
        return _SCOPES[scope]
    except KeyError:
        raise ValueError(f"scope is one of {sorted(_SCOPES)}, not {scope!r}") from None


class OperatorClient(Connection):
    """An operator's connection (its certificate names the operator). Operators cannot sign,
    approve or read key material."""

    def freeze(self, scope: Scope, target: str = "", *, reason: str) -> control_pb2.FreezeResponse:
        """Freezes ``scope`` (``target``: agent id, session id or key id; ``""`` for global)
        at once; ``created`` is false when it was frozen already."""
        request = control_pb2.FreezeRequest(scope=_scope(scope), target=target, reason=reason)
        return self._call(rpc.FREEZE, request)

    def unfreeze(self, scope: Scope, target: str = "", *, reason: str) -> bool:
        """Lifts a freeze (a breaker's too); false when nothing was frozen there."""
        request = control_pb2.UnfreezeRequest(scope=_scope(scope), target=target, reason=reason)
        return self._call(rpc.UNFREEZE, request).removed

    def list_freezes(self) -> list[control_pb2.FreezeRecord]:
        """The freezes in force, oldest first."""
        return list(self._call(rpc.LIST_FREEZES, control_pb2.ListFreezesRequest()).freezes)

    def revoke_identity(
        self, *, principal_id: str = "", cert_serial: str = "", reason: str
    ) -> control_pb2.RevokeIdentityResponse:
        """Revokes a principal (in every role) or one certificate serial, for good."""
        if bool(principal_id) == bool(cert_serial):
            raise ValueError("name exactly one of principal_id and cert_serial")
        request = control_pb2.RevokeIdentityRequest(
            principal_id=principal_id, cert_serial=cert_serial, reason=reason
        )
        return self._call(rpc.REVOKE_IDENTITY, request)

    def list_revocations(self) -> list[control_pb2.RevocationRecord]:
        """Every revocation, oldest first."""
        request = control_pb2.ListRevocationsRequest()
        return list(self._call(rpc.LIST_REVOCATIONS, request).revocations)

    def checkpoint(self) -> control_pb2.CheckpointResponse:
        """Signs a checkpoint of the audit log now (with the audit public key to check it)."""
        return self._call(rpc.CHECKPOINT, control_pb2.CheckpointRequest())

    def inclusion_proof(self, seq: int, tree_size: int = 0) -> control_pb2.InclusionProofResponse:
        """Proof that audit record ``seq`` is in the tree of ``tree_size`` (0: current)."""
        request = control_pb2.InclusionProofRequest(seq=seq, tree_size=tree_size)
        return self._call(rpc.INCLUSION_PROOF, request)

    def consistency_proof(self, first: int, second: int) -> control_pb2.ConsistencyProofResponse:
        """Proof that the audit tree of size ``first`` is a prefix of the one of ``second``."""
        request = control_pb2.ConsistencyProofRequest(first=first, second=second)
        return self._call(rpc.CONSISTENCY_PROOF, request)

    def explain_agent(self, agent_id: str) -> dict[str, Any]:
        """What ``agent_id`` can do now: the ``paywarden.explain.agent/v1`` document."""
        request = control_pb2.ExplainAgentRequest(agent_id=agent_id)
        document: dict[str, Any] = json.loads(self._call(rpc.EXPLAIN_AGENT, request).document)
        return document

    def reload_policy(self) -> control_pb2.ReloadPolicyResponse:
        """Reads the policy directory again (a widening may wait for a second operator)."""
        return self._call(rpc.RELOAD_POLICY, control_pb2.ReloadPolicyRequest())

    def get_reload(self, reload_id: str) -> control_pb2.ReloadPolicyResponse:
        """A pending reload, to review before :meth:`confirm_reload`."""
        return self._call(rpc.GET_RELOAD, control_pb2.GetReloadRequest(reload_id=reload_id))

    def confirm_reload(self, reload_id: str, new_sha256: str) -> control_pb2.ReloadPolicyResponse:
        """Puts a pending reload in force: ``new_sha256`` names the set reviewed."""
        request = control_pb2.ConfirmReloadRequest(reload_id=reload_id, new_sha256=new_sha256)
        return self._call(rpc.CONFIRM_RELOAD, request)
