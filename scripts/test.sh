#!/usr/bin/env bash
# The one test command: installs what is missing (.venv from the hash-pinned
# requirements/dev.lock), runs ruff and mypy, then the whole pytest suite (a
# fresh SoftHSM2 token and PKI are made per run in a temporary directory; the
# supply-chain test also builds a serving venv from requirements/serve.lock).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/lint.sh
exec .venv/bin/python -m pytest "$@"
