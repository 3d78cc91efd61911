#!/usr/bin/env bash
# Development provisioning under data/ (never committed): a SoftHSM2 token
# with generated DEVELOPMENT-ONLY PINs, the payment key payments.v1, and a dev
# PKI with one certificate per role. Idempotent: an existing token, key or
# certificate is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
export SOFTHSM2_CONF="$PWD/softhsm.conf"
mkdir -p data/softhsm/tokens data/dev data/pki
cat > data/dev/README <<'TXT'
DEVELOPMENT ONLY. These PINs protect the local SoftHSM2 development token
made by scripts/dev-provision.sh. They are generated on this machine, never
committed, and must never be used for a production HSM.
TXT
for f in DEVELOPMENT-ONLY-so.pin DEVELOPMENT-ONLY-user.pin; do
  if [ ! -s "data/dev/$f" ]; then
    .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "data/dev/$f"
  fi
done
K=".venv/bin/python scripts/keys.py --label paywarden-dev"
$K init-token --so-pin-file data/dev/DEVELOPMENT-ONLY-so.pin --pin-file data/dev/DEVELOPMENT-ONLY-user.pin
$K generate --pin-file data/dev/DEVELOPMENT-ONLY-user.pin --key payments.v1
$K generate --pin-file data/dev/DEVELOPMENT-ONLY-user.pin --key audit.v1
mkdir -p data/policy
if [ ! -e data/policy/dev.toml ]; then cp examples/policy/dev.toml data/policy/dev.toml; fi
.venv/bin/paywarden policy check data/policy/*.toml >/dev/null
P=".venv/bin/python scripts/pki.py"
$P init-ca --dir data/pki
$P server --dir data/pki
# Client certificates last 24 hours: one made on an earlier day is renewed.
for who in planner:dev-planner agent:dev-agent approver:dev-approver operator:dev-operator; do
  $P issue --dir data/pki --role "${who%%:*}" --id "${who#*:}"
  $P renew --dir data/pki --role "${who%%:*}" --id "${who#*:}" --if-within 2
done
