#!/usr/bin/env bash
# Installs what Paywarden needs on Debian/Ubuntu: SoftHSM2 and Python's venv
# support (apt, when missing) and a virtual environment in .venv with the
# project and its dev tools. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

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

# A venv is usable only if its pip runs (Debian's python3 without python3-venv
# leaves a half-made .venv behind).
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    minor="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install python3-venv "python${minor}-venv"
    "$PYTHON" -m venv .venv
  fi
fi
stamp=.venv/.paywarden-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
echo "install.sh: ready (.venv, softhsm2 $(softhsm2-util --version))"
