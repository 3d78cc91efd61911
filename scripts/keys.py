#!/usr/bin/env python3
"""Key custody for the security team: token initialisation and payment keys.

    scripts/keys.py init-token  --so-pin-file F --pin-file F [--label L]
    scripts/keys.py generate    --pin-file F --key LABEL.vN [--profile jws-es256|x402-exact-evm]
    scripts/keys.py list        --pin-file F
    scripts/keys.py export      --pin-file F --key LABEL.vN [--format pem|jwk|address] [--out FILE]
    scripts/keys.py rotate      --config FILE --label LABEL
    scripts/keys.py revoke      --config FILE --key LABEL.vN [--reason TEXT]
    scripts/keys.py destroy     --config FILE --key LABEL.vN [--grace-hours H]

The commands are paywarden.signer.cli.keys (installed as ``paywarden-keys``);
this wrapper runs them with softhsm.conf beside this repository as the SoftHSM2
configuration unless SOFTHSM2_CONF is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

from paywarden.signer.cli.keys import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    sys.exit(main(prog="keys.py", softhsm_conf=ROOT / "softhsm.conf"))
