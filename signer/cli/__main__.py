"""``python -m paywarden.signer.cli``: the same as the ``paywarden`` command."""

import sys

from paywarden.signer.cli.commands import main

sys.exit(main())
