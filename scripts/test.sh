#!/usr/bin/env bash
# The one test command: installs what is missing (.venv from the hash-pinned
# requirements/dev.lock), runs ruff and mypy, then the whole pytest suite (a
# fresh SoftHSM2 token and PKI are made per run in a temporary directory; the
# supply-chain test also builds a serving venv from requirements/serve.lock).
# It measures the coverage of paywarden.signer, .policy and .hsm by the tests that
# run in process and fails below the floor in pyproject.toml ([tool.coverage.report]
# fail_under); servers the tests start as subprocesses are not measured.
# Extra arguments go to pytest; with them (a part of the suite), coverage is still
# reported but no floor applies.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/lint.sh
cov=(--cov --cov-report=term)
if [ "$#" -gt 0 ]; then
  cov+=(--cov-fail-under=0)
fi
exec .venv/bin/python -m pytest "${cov[@]}" "$@"
