"""``paywarden-keys rotate | revoke | destroy``: payment key versions through their lifecycle.

    paywarden-keys rotate   --config FILE --label LABEL
    paywarden-keys revoke   --config FILE --key LABEL.vN [--reason TEXT]
    paywarden-keys destroy  --config FILE --key LABEL.vN [--grace-hours H]

They work on the signer's store and token, both named by the signer's configuration
(``--config``, as ``paywarden audit`` reads it): ``store.url`` or ``store.path``, and
``hsm.module``, ``hsm.token_label`` and ``hsm.softhsm_conf``. The PIN comes from ``--pin-file`` or
``--pin-env``, else from the configuration's own source (``hsm.pin_file`` or
``hsm.pin_env``); it is never printed. A running signer (every replica sharing the
store) picks each change up without a restart: a revoked version signs nothing from
the next request on. ``rotate`` keeps the label's profile: an ``x402-exact-evm`` label
gets a new secp256k1 version and prints its address, a new one (the old address keeps
its balance, and Paywarden signs nothing more from it). Every change is audited; every
refusal exits non-zero and says why.
The rules are :mod:`paywarden.signer.core.key_custody`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from paywarden.hsm import KeyRef, provision, read_pin
from paywarden.hsm.evm_keys import spki_profile
from paywarden.policy import PackError, load_pack_dir
from paywarden.policy.vocabulary import KeyProfile, KeyState
from paywarden.signer.cli.support import CliExit, config_from_args, key_argument
from paywarden.signer.config import Config
from paywarden.signer.core import key_custody
from paywarden.signer.core.keys import evm_key_of
from paywarden.signer.store.opening import open_store
from paywarden.signer.store.records import StoreError
from paywarden.signer.timekeeping import HighWater

CUSTODY_ROLE = "custody"


def add_parsers(sub: Any) -> None:
    """The three commands, on ``paywarden-keys``' subcommands."""
    p = sub.add_parser(
        "rotate", help="make a new version of a key (of the same profile) inside the HSM, active"
    )
    _common(p)
    p.add_argument("--label", dest="key_label", required=True, help="key label, e.g. payments")
    p.set_defaults(fn=cmd_rotate)
    p = sub.add_parser("revoke", help="revoke a key version: it signs nothing from now on")
    _common(p)
    p.add_argument("--key", type=key_argument, required=True, help="LABEL.vN")
    p.add_argument("--reason", default="", help="why (kept in the store and the audit log)")
    p.set_defaults(fn=cmd_revoke)
    p = sub.add_parser("destroy", help="delete a retired key version from the token")
    _common(p)
    p.add_argument("--key", type=key_argument, required=True, help="LABEL.vN")
    p.add_argument(
        "--grace-hours",
        type=float,
        default=key_custody.DEFAULT_GRACE_HOURS,
        help="how long since the version stopped being active (default %(default)g)",
    )
    p.set_defaults(fn=cmd_destroy)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="the signer's configuration")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pin-file", help="file holding the user PIN (default: hsm.pin_file)")
    group.add_argument("--pin-env", help="environment variable holding the user PIN")


class _Custody:
    """The store, the token and the actor of one command."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.config: Config = config_from_args(args)
        hsm = self.config.hsm
        if hsm.softhsm_conf is not None:  # before the PKCS#11 module is loaded
            os.environ["SOFTHSM2_CONF"] = str(hsm.softhsm_conf)
        self.module, self.token = hsm.module, hsm.token_label
        if args.pin_file or args.pin_env:
            self._pin = read_pin(Path(args.pin_file) if args.pin_file else None, args.pin_env)
        else:
            self._pin = read_pin(hsm.pin_file, hsm.pin_env)
        store = self.config.store
        if not store.postgres and not store.path.exists():
            raise CliExit(
                1, f"no store at {store.path}: start the signer once with this configuration"
            )
        self.store = open_store(store)
        self.store.migrate()
        self.now = HighWater(time.time, self.store.latest_audit_time()).now()
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid-{os.getuid()}"
        self.actor = {"role": CUSTODY_ROLE, "id": user}

    def generate(self, ref: KeyRef, profile: KeyProfile) -> Any:
        return provision.generate_new_key(self.module, self.token, self._pin, ref, profile)

    def delete(self, ref: KeyRef) -> int:
        return provision.delete_key(self.module, self.token, self._pin, ref)


def _run(args: argparse.Namespace, body: Any) -> int:
    custody = None
    try:
        custody = _Custody(args)
        code: int = body(custody)
        return code
    except key_custody.CustodyRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"the store cannot be used: {exc}", file=sys.stderr)
        return 1
    finally:
        if custody is not None:
            custody.store.close()


def cmd_rotate(args: argparse.Namespace) -> int:
    def body(c: _Custody) -> int:
        new, demoted = key_custody.rotate(
            c.store,
            args.key_label,
            c.generate,
            c.now,
            c.actor,
            audit_label=KeyRef.parse(c.config.audit.key).label,
        )
        print(f"key {new.key_id}: generated inside the HSM, active")
        if spki_profile(new.spki_der) is KeyProfile.X402_EXACT_EVM:
            address = evm_key_of(KeyRef(new.label, new.version), new.spki_der).address
            print(f"key {new.key_id}: address {address}")
            print(
                f"warning: {address} is a new address: fund it; the addresses of the "
                "verify-only versions keep their balances, and Paywarden signs nothing more "
                "from them",
                file=sys.stderr,
            )
        for key_id in demoted:
            print(f"key {key_id}: verify-only")
        _warn_packs(c.config, demoted, new.key_id)
        return 0

    return _run(args, body)


def cmd_revoke(args: argparse.Namespace) -> int:
    def body(c: _Custody) -> int:
        key = key_custody.revoke(c.store, args.key.key_id, args.reason, c.now, c.actor)
        when = datetime.fromtimestamp(key.revoked_at or c.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"key {key.key_id}: revoked at {when}; it signs nothing from the next request on")
        if not any(
            v.label == key.label and v.state is KeyState.ACTIVE for v in c.store.key_versions()
        ):
            print(
                f"warning: key {key.label!r} has no active version now: Sign with it is "
                f"refused (KEY_NOT_ACTIVE) until `rotate --label {key.label}`",
                file=sys.stderr,
            )
        return 0

    return _run(args, body)


def cmd_destroy(args: argparse.Namespace) -> int:
    if args.grace_hours < 0:
        print("refused: --grace-hours must not be negative", file=sys.stderr)
        return 2

    def body(c: _Custody) -> int:
        grace = round(args.grace_hours * 3600)
        deleted = key_custody.destroy(c.store, args.key.key_id, grace, c.delete, c.now, c.actor)
        print(
            f"key {args.key.key_id}: destroyed ({deleted} objects deleted from token {c.token!r})"
        )
        for version in c.store.key_versions():
            if version.key_id == args.key.key_id and (
                spki_profile(version.spki_der) is KeyProfile.X402_EXACT_EVM
            ):
                address = evm_key_of(KeyRef.parse(version.key_id), version.spki_der).address
                print(
                    f"warning: {address} had no other key: whatever it still holds can no "
                    "longer be moved",
                    file=sys.stderr,
                )
        return 0

    return _run(args, body)


def _warn_packs(config: Config, demoted: list[str], new_id: str) -> None:
    """Packs that grant a version by its exact id keep granting only that version: after a
    rotation they name a verify-only key, and Sign with it is refused (KEY_NOT_ACTIVE)."""
    try:
        packs = load_pack_dir(config.policy.dir, config.groups)
    except PackError as exc:
        print(f"warning: cannot read the policy packs to check them: {exc}", file=sys.stderr)
        return
    for pack in packs.packs:
        for asset, rules in sorted(pack.model.assets.items()):
            for key_id in sorted(set(rules.keys) & set(demoted)):
                label = KeyRef.parse(key_id).label
                print(
                    f"warning: pack {pack.id} asset {asset} grants {key_id}, verify-only now: "
                    f"Sign with it is refused (KEY_NOT_ACTIVE), and the pack no longer loads; "
                    f"grant {label!r} (its active version) or {new_id}",
                    file=sys.stderr,
                )
