#!/usr/bin/env bash
# The one set-up command: installs everything, provisions the development
# token, key and certificates under data/, and runs the signer on its embedded
# defaults (127.0.0.1:50051, mutual TLS, SQLite in data/paywarden.db).
# Extra arguments go to `paywarden serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/dev-provision.sh
exec .venv/bin/paywarden serve "$@"
