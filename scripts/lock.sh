#!/usr/bin/env bash
# Regenerates the hash-pinned lock files that scripts/install.sh installs from:
#   requirements/serve.lock  the service's dependencies (pyproject [project] dependencies)
#   requirements/dev.lock    those plus the dev tools ([project.optional-dependencies] dev)
# Both also pin the build backend (requirements/build.in), so that the project itself
# installs with --no-build-isolation and nothing is fetched without a hash. Pinned for
# CPython 3.11 on Linux x86_64, with the hashes of every file of each pinned version.
# Run it after changing dependencies in pyproject.toml; tests/attacks/test_supply_chain.py
# fails while a lock is missing a dependency or carries a dev tool into serving.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
UV_VERSION="0.13.9"
tool="$(mktemp -d)"
trap 'rm -rf "$tool"' EXIT
"$PYTHON" -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
compile() {
  "$tool/venv/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-unknown-linux-gnu --custom-compile-command scripts/lock.sh "$@"
}
compile pyproject.toml requirements/build.in -o requirements/serve.lock
# The dev lock keeps every version the serve lock pins.
compile pyproject.toml requirements/build.in --extra dev -c requirements/serve.lock \
  -o requirements/dev.lock
echo "lock.sh: wrote requirements/serve.lock and requirements/dev.lock"
