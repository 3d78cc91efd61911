"""The approver's client: see held payments, approve or deny them."""

from __future__ import annotations

from paywarden.client._calls import APPROVE, DENY, GET_APPROVAL, LIST_PENDING
from paywarden.client._connection import Connection
from paywarden.v1 import approvals_pb2


class ApproverClient(Connection):
    """A human approver's connection (its certificate names the approver). The signer never
    lets an approver approve a payment it requested or whose session it opened.

    ``Approval.untrusted_purpose`` is the agent's own words, possibly written under prompt
    injection: show it as such, and decide on the payload and the trace."""

    def list_pending(self) -> list[approvals_pb2.Approval]:
        """Payments waiting for approval, oldest first."""
        return list(self._call(LIST_PENDING, approvals_pb2.ListPendingRequest()).approvals)

    def get(self, approval_id: str) -> approvals_pb2.Approval:
        """One approval with its payload and decision trace (``trace_json``)."""
        request = approvals_pb2.GetApprovalRequest(approval_id=approval_id)
        return self._call(GET_APPROVAL, request).approval

    def approve(self, approval_id: str, note: str = "") -> approvals_pb2.Approval:
        """Adds this approver's approval; the answer says whether enough approvers agreed
        (state ``"approved"``)."""
        request = approvals_pb2.ApproveRequest(approval_id=approval_id, note=note)
        return self._call(APPROVE, request).approval

    def deny(self, approval_id: str, note: str = "") -> approvals_pb2.Approval:
        """Denies the payment (recorded with ``note``): the agent's next ask is refused
        ``APPROVAL_DENIED``."""
        request = approvals_pb2.DenyRequest(approval_id=approval_id, note=note)
        return self._call(DENY, request).approval
