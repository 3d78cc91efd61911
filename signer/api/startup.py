"""What the signer checks and opens before it serves: the TLS files, the client CA,
the policy packs, the HSM and the descriptor limit. Each failure that must stop
start-up is a :class:`StartupError` naming the setting or file at fault."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable, Sequence

import grpc
from paywarden.hsm import Hsm, HsmError, HsmPinRejected, KeyRef, read_pin
from paywarden.policy import PackError, PackSet, compile_all, load_pack_dir
from paywarden.signer.api.tls import RevocationList, ServerTls, TlsFilesError, read_file
from paywarden.signer.config import Config
from paywarden.signer.core.key_grants import check_grants, check_profiles
from paywarden.signer.identity import Authenticator
from paywarden.signer.store.records import KeyVersion

# The logger of start-up, as before these checks left server.py.
log = logging.getLogger("paywarden.signer.api.server")

# Descriptors the process needs besides client connections: the store, the
# HSM library, the metrics listener, gRPC's own pipes and epoll.
DESCRIPTOR_RESERVE = 128


class StartupError(Exception):
    """The signer cannot start; the message says which setting or file."""


def server_credentials(config: Config, auth: Authenticator | None = None) -> grpc.ServerCredentials:
    """mTLS credentials that follow the TLS files (:mod:`paywarden.signer.api.tls`); ``auth``
    is held to the client CAs they trust. An unusable file stops start-up, naming its setting."""
    try:
        return ServerTls(config.server, auth).credentials()
    except TlsFilesError as exc:
        raise StartupError(str(exc)) from None


def revocation_list(config: Config) -> RevocationList | None:
    """``server.crl_file`` read and checked (None when it is not set)."""
    if config.server.crl_file is None:
        return None
    try:
        return RevocationList(config.server, config.server.crl_file)
    except TlsFilesError as exc:
        raise StartupError(str(exc)) from None


def check_descriptor_limit(config: Config) -> None:
    """Raises the soft ``RLIMIT_NOFILE`` to fit ``server.max_connections`` if it may."""
    need = config.server.max_connections + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "the descriptor limit (%d) is below server.max_connections + %d (%d): raise"
            " `ulimit -n` or lower server.max_connections, or idle connections can"
            " exhaust descriptors",
            soft,
            DESCRIPTOR_RESERVE,
            need,
        )


def authenticator(config: Config, clock: Callable[[], float] = time.time) -> Authenticator:
    """Holds client certificates to the client profile of ``server.client_ca``, and to
    their dates by ``clock`` (the wall clock) on every call."""
    s = config.server
    try:
        ca_pem = read_file(s.client_ca, "server.client_ca")
        return Authenticator.from_pem(s.trust_domain, ca_pem, clock)
    except TlsFilesError as exc:
        raise StartupError(str(exc)) from None
    except ValueError:
        raise StartupError(f"server.client_ca: {s.client_ca} holds no PEM certificate") from None


def load_packs(config: Config, keys: Sequence[KeyVersion] | None = None) -> PackSet:
    """Loads and compiles the policy packs; any error stops start-up (fail closed).
    ``keys``: the stored key versions, in which every key a pack grants must be active
    (:func:`~paywarden.signer.core.key_grants.check_grants`)."""
    try:
        packs = load_pack_dir(config.policy.dir, config.groups)
        compile_all(packs.packs, config.asset_table())
        if keys is not None:
            configured = [r.key_id for r in (*config.key_refs(), *config.evm_key_refs())]
            check_grants(packs.packs, keys, configured)
            check_profiles(packs.packs, config.key_profiles(), x402_assets(config))
    except PackError as exc:
        raise StartupError(f"policy.dir: {exc}") from None
    if not packs.packs:
        log.warning("no policy packs in %s: every payment will be denied", config.policy.dir)
    return packs


def x402_assets(config: Config) -> set[str]:
    """The codes of the assets paid with x402."""
    return {code for code, a in config.assets.items() if a.x402 is not None}


def open_hsm(
    config: Config,
    keys: Sequence[KeyRef] | None = None,
    evm_keys: Sequence[KeyRef] | None = None,
) -> Hsm:
    """Builds the HSM client and tries to open it; an unusable HSM is not fatal.
    ``keys``, ``evm_keys``: the ``jws-es256`` and ``x402-exact-evm`` payment keys it
    must find at open (default: the configured ones)."""
    if config.hsm.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
    try:
        pin = read_pin(config.hsm.pin_file, config.hsm.pin_env, config.hsm.pin_fd)
    except HsmError as exc:
        raise StartupError(str(exc)) from None
    if config.hsm.pin_env is not None:
        log.warning(
            "hsm.pin_env: the HSM PIN stays readable in /proc/%d/environ for as long as "
            "this process runs; prefer hsm.pin_file or hsm.pin_fd",
            os.getpid(),
        )
    hsm = Hsm(
        config.hsm.module,
        config.hsm.token_label,
        pin,
        config.key_refs() if keys is None else keys,
        audit_key=config.audit.ref(),
        evm_keys=config.evm_key_refs() if evm_keys is None else evm_keys,
        retry_interval=config.hsm.retry_interval_seconds,
    )
    try:
        hsm.open()
    except HsmPinRejected as exc:
        source = (
            "hsm.pin_file"
            if config.hsm.pin_file is not None
            else "hsm.pin_fd"
            if config.hsm.pin_fd is not None
            else "hsm.pin_env"
        )
        raise StartupError(f"{source}: {exc}") from None
    except HsmError as exc:
        # Keep serving: Sign answers UNAVAILABLE until the token comes back.
        log.error("HSM not usable at start-up: %s", exc)
    return hsm
