"""Paywarden's Python client SDK: agents, planners, approvers and operators over mutual TLS.

It depends on the generated API (``paywarden.v1``), gRPC and ``paywarden.verify``, never on the
signer's own code, so that an agent platform installs it without running a signer.
"""
