"""Key custody for the security team: token initialisation and payment keys.

    paywarden-keys init-token  --so-pin-file F --pin-file F [--label L]
    paywarden-keys generate    --pin-file F --key LABEL.vN [--profile jws-es256|x402-exact-evm]
    paywarden-keys list        --pin-file F
    paywarden-keys export      --pin-file F --key LABEL.vN [--format pem|jwk|address] [--out FILE]
    paywarden-keys rotate      --config FILE --label LABEL
    paywarden-keys revoke      --config FILE --key LABEL.vN [--reason TEXT]
    paywarden-keys destroy     --config FILE --key LABEL.vN [--grace-hours H]

``scripts/keys.py`` runs the same commands. PINs come from files or environment
variables (--pin-env NAME), never from the command line. SOFTHSM2_CONF names the
SoftHSM2 configuration (``scripts/keys.py`` defaults it to the repository's
softhsm.conf). A key's profile is its curve: ``jws-es256`` (P-256, the default) signs
payment JWSs, ``x402-exact-evm`` (secp256k1) signs x402 authorisations from its
Ethereum address, which ``generate`` and ``export --format address`` print (fund that
address). Every command is idempotent and exits non-zero with a message on
failure. The token work itself is :mod:`paywarden.hsm.provision`; this module is
its command line. ``rotate``, ``revoke`` and ``destroy`` move payment key versions
through their lifecycle in the signer's store and token
(:mod:`paywarden.signer.cli.key_lifecycle`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from paywarden.hsm import HsmError, provision, read_pin
from paywarden.policy.vocabulary import KeyProfile
from paywarden.signer.cli import key_lifecycle
from paywarden.signer.cli.pipes import quiet_on_broken_pipe
from paywarden.signer.cli.support import CliExit, key_argument

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def _pin(args: argparse.Namespace, prefix: str = "") -> str:
    file_ = getattr(args, f"{prefix}pin_file")
    env = getattr(args, f"{prefix}pin_env")
    return read_pin(Path(file_) if file_ else None, env)


def _add_pin(p: argparse.ArgumentParser, prefix: str = "", what: str = "user PIN") -> None:
    flag = prefix.replace("_", "-")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(f"--{flag}pin-file", help=f"file holding the {what}")
    group.add_argument(f"--{flag}pin-env", help=f"environment variable holding the {what}")


def cmd_init_token(args: argparse.Namespace) -> int:
    created = provision.init_token(args.module, args.label, _pin(args, "so_"), _pin(args))
    if created:
        print(f"token {args.label!r}: initialised")
    else:
        print(f"token {args.label!r}: already exists, nothing done")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    pin = _pin(args)
    created, status = provision.generate_key(
        args.module, args.label, pin, args.key, KeyProfile(args.profile)
    )
    verb = "generated" if created else "already exists, nothing done"
    print(
        f"key {status.ref.key_id}: {verb} (profile={status.profile}, sensitive={status.sensitive}, "
        f"extractable={status.extractable}, never_extractable={status.never_extractable}, "
        f"modifiable={status.modifiable})"
    )
    if not status.safe:
        print(f"key {status.ref.key_id}: UNSAFE, the signer will refuse it", file=sys.stderr)
        if status.modifiable:
            print(
                f"key {status.ref.key_id}: made modifiable by an older keys.py; generate a new "
                "version (e.g. --key LABEL.v<N+1>) and configure it",
                file=sys.stderr,
            )
        return 1
    if status.profile is KeyProfile.X402_EXACT_EVM:
        address = provision.export_evm_public_key(args.module, args.label, pin, args.key).address
        print(f"key {status.ref.key_id}: address {address}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = provision.list_keys(args.module, args.label, _pin(args))
    if not keys:
        print(f"token {args.label!r}: no payment keys")
    for s in keys:
        unsafe = "" if s.safe else "\tUNSAFE"
        print(
            f"{s.ref.key_id}\tprofile={s.profile}\tsensitive={s.sensitive}\textractable={s.extractable}"
            f"\tnever_extractable={s.never_extractable}\tsign={s.can_sign}\tdecrypt={s.can_decrypt}"
            f"\tprivate={s.private}\tmodifiable={s.modifiable}{unsafe}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "address":
        evm = provision.export_evm_public_key(args.module, args.label, _pin(args), args.key)
        text = evm.address + "\n"
    else:
        info = provision.export_public_key(args.module, args.label, _pin(args), args.key)
        text = info.spki_pem if args.format == "pem" else json.dumps(info.jwk(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="ascii")
        print(f"key {args.key.key_id}: public key written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


@quiet_on_broken_pipe
def main(
    argv: list[str] | None = None, *, prog: str = "paywarden-keys", softhsm_conf: Path | None = None
) -> int:
    """Runs one command; ``softhsm_conf`` is the SoftHSM2 configuration used unless
    SOFTHSM2_CONF is set, and ``prog`` names the command in usage and errors."""
    if softhsm_conf is not None:
        os.environ.setdefault("SOFTHSM2_CONF", str(softhsm_conf))
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=os.environ.get("PKCS11_MODULE", DEFAULT_MODULE))
    parser.add_argument("--label", default="paywarden-dev", help="token label")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init-token", help="initialise a free SoftHSM2 slot")
    _add_pin(p, "so_", "SO PIN")
    _add_pin(p)
    p.set_defaults(fn=cmd_init_token)
    p = sub.add_parser("generate", help="generate a payment key pair inside the token")
    _add_pin(p)
    p.add_argument("--key", type=key_argument, required=True, help="LABEL.vN, e.g. payments.v1")
    p.add_argument(
        "--profile",
        choices=[profile.value for profile in KeyProfile],
        default=KeyProfile.JWS_ES256.value,
        help="jws-es256: P-256, payment JWSs; x402-exact-evm: secp256k1, x402 authorisations",
    )
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("list", help="list payment keys and their attributes")
    _add_pin(p)
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("export", help="export a public key (never a private one)")
    _add_pin(p)
    p.add_argument("--key", type=key_argument, required=True)
    p.add_argument(
        "--format",
        choices=("pem", "jwk", "address"),
        default="pem",
        help="address: an x402-exact-evm key's Ethereum address",
    )
    p.add_argument("--out")
    p.set_defaults(fn=cmd_export)
    key_lifecycle.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
    except HsmError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except CliExit as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    return code
