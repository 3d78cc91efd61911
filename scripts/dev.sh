#!/usr/bin/env bash
# The one set-up command: installs everything, provisions the development
# token, key and certificates under data/, and runs the signer on its embedded
# defaults (127.0.0.1:50051, mutual TLS, SQLite in data/paywarden.db).
# The signer runs from .venv-serve, made from requirements/serve.lock only (no
# dev tools); .venv (requirements/dev.lock) provisions and runs the README's
# other commands. Extra arguments go to `paywarden serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/install.sh --serve
./scripts/dev-provision.sh
exec .venv-serve/bin/paywarden serve "$@"
