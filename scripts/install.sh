#!/usr/bin/env bash
# Installs what Paywarden needs on Debian/Ubuntu: SoftHSM2, PostgreSQL's server
# (the tests start throwaway clusters with its initdb and pg_ctl), Chromium (dev mode:
# the tests render the operator report headless) and Python's venv
# support (apt, when missing) and a virtual environment made only from a
# hash-pinned lock file (scripts/lock.sh writes them), then the project itself
# without dependencies:
#   ./scripts/install.sh           .venv        requirements/dev.lock: the service and the
#                                               dev tools (tests, lint, the README's commands)
#   ./scripts/install.sh --serve   .venv-serve  requirements/serve.lock: what serving needs
#                                               and nothing else (no test or build tools)
# Every file is checked against its hash (pip --require-hashes, wheels only); the build
# backend comes from the lock too. A venv whose lock changed is made again from scratch,
# so it holds exactly its lock. PAYWARDEN_VENV names another directory for the venv.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
case "${1:-}" in
  "") venv=.venv lock=requirements/dev.lock ;;
  --serve) venv=.venv-serve lock=requirements/serve.lock ;;
  *)
    echo "usage: install.sh [--serve]" >&2
    exit 2
    ;;
esac
venv="${PAYWARDEN_VENV:-$venv}"

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "install.sh: need root (or sudo) to apt-get install $*" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  echo "install.sh: installing $* with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$PYTHON" >/dev/null; then
  apt_install python3 python3-venv
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "install.sh: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 1
fi
if ! command -v softhsm2-util >/dev/null || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
  apt_install softhsm2
fi
# Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/VERSION/bin.
postgres_server_present() {
  local initdb
  for initdb in /usr/lib/postgresql/*/bin/initdb; do
    [ -x "$initdb" ] && return 0
  done
  command -v initdb >/dev/null
}
if ! postgres_server_present; then
  apt_install postgresql
fi
# Headless Chromium renders the operator report in the tests (dev mode only).
if [ "$venv" != .venv-serve ] && [ -z "${1:-}" ] && ! command -v chromium >/dev/null; then
  apt_install chromium
fi

stamp="$venv/.paywarden-lock"
want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  # Debian's python3 without python3-venv leaves a half-made venv behind.
  if ! "$PYTHON" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    minor="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install python3-venv "python${minor}-venv"
    "$PYTHON" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --require-hashes --no-deps --only-binary :all: -r "$lock"
  rm -f "$venv/.paywarden-project"
  echo "$want" >"$stamp"
fi
# The project itself: its dependencies are the lock's, its build backend the lock's.
project="$venv/.paywarden-project"
if [ ! -f "$project" ] || [ pyproject.toml -nt "$project" ]; then
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  "$venv/bin/python" -m pip check >/dev/null
  touch "$project"
fi
echo "install.sh: ready ($venv from $lock, softhsm2 $(softhsm2-util --version))"
