#!/usr/bin/env bash
# ruff and mypy --strict on our packages. mypy cannot follow setuptools'
# editable package-dir mapping, so it reads a tree of symlinks that mirrors
# the installed names (paywarden.signer -> signer/, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check signer policy hsm client verify scripts tests
tree=build/typecheck/paywarden
rm -rf build/typecheck && mkdir -p "$tree"
ln -s "$PWD/signer" "$tree/signer"
ln -s "$PWD/policy" "$tree/policy"
ln -s "$PWD/hsm" "$tree/hsm"
ln -s "$PWD/client" "$tree/client"
ln -s "$PWD/verify" "$tree/verify"
ln -s "$PWD/proto/paywarden/v1" "$tree/v1"
MYPYPATH=build/typecheck "$VENV/bin/mypy" -p paywarden.signer -p paywarden.policy -p paywarden.hsm \
  -p paywarden.client -p paywarden.verify
# The security team's scripts are held to the same standard.
MYPYPATH=build/typecheck "$VENV/bin/mypy" scripts/*.py
# And the tests: --strict too, but for the two checks that only the untyped
# generated gRPC stubs trip (the [[tool.mypy.overrides]] for tests.* in pyproject.toml).
MYPYPATH=build/typecheck "$VENV/bin/mypy" tests
