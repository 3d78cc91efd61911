#!/usr/bin/env python3
"""Development PKI: a CA, the server certificate and role client certificates.

    scripts/pki.py init-ca  --dir DIR [--trust-domain paywarden.local]
    scripts/pki.py server   --dir DIR [--host 127.0.0.1] [--dns localhost]
    scripts/pki.py issue    --dir DIR --role agent --id agent-7 [--hours 24]
    scripts/pki.py renew    --dir DIR --role agent --id agent-7 [--hours 24] [--if-within H]

The commands are paywarden.signer.cli.pki (installed as ``paywarden-pki``).
"""

from __future__ import annotations

import sys

from paywarden.signer.cli.pki import main

if __name__ == "__main__":
    sys.exit(main(prog="pki.py"))
