#!/usr/bin/env bash
# Development provisioning under data/ (never committed): a SoftHSM2 token
# with generated DEVELOPMENT-ONLY PINs, the payment key payments.v1, and a dev
# PKI with one certificate per role. Idempotent: an existing token, key or
# certificate is reused.
# PAYWARDEN_DATA names another directory instead of data/ (scripts/replicas.sh's
# test provisions a temporary one): its token directory is then named by the
# SoftHSM2 configuration written there, $PAYWARDEN_DATA/softhsm.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
DATA="${PAYWARDEN_DATA:-data}"
mkdir -p "$DATA/softhsm/tokens" "$DATA/dev" "$DATA/pki"
if [ -z "${PAYWARDEN_DATA:-}" ]; then
  export SOFTHSM2_CONF="$PWD/softhsm.conf"
else
  DATA="$(cd "$DATA" && pwd)"
  export SOFTHSM2_CONF="$DATA/softhsm.conf"
  sed "s|^directories.tokendir = .*|directories.tokendir = $DATA/softhsm/tokens|" \
    softhsm.conf >"$SOFTHSM2_CONF"
fi
cat > "$DATA/dev/README" <<'TXT'
DEVELOPMENT ONLY. These PINs protect the local SoftHSM2 development token
made by scripts/dev-provision.sh. They are generated on this machine, never
committed, and must never be used for a production HSM.
TXT
for f in DEVELOPMENT-ONLY-so.pin DEVELOPMENT-ONLY-user.pin; do
  if [ ! -s "$DATA/dev/$f" ]; then
    .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$DATA/dev/$f"
  fi
done
K=".venv/bin/python scripts/keys.py --label paywarden-dev"
$K init-token --so-pin-file "$DATA/dev/DEVELOPMENT-ONLY-so.pin" --pin-file "$DATA/dev/DEVELOPMENT-ONLY-user.pin"
$K generate --pin-file "$DATA/dev/DEVELOPMENT-ONLY-user.pin" --key payments.v1
$K generate --pin-file "$DATA/dev/DEVELOPMENT-ONLY-user.pin" --key audit.v1
mkdir -p "$DATA/policy"
if [ ! -e "$DATA/policy/dev.toml" ]; then cp examples/policy/dev.toml "$DATA/policy/dev.toml"; fi
.venv/bin/paywarden policy check "$DATA"/policy/*.toml >/dev/null
P=".venv/bin/python scripts/pki.py"
$P init-ca --dir "$DATA/pki"
$P server --dir "$DATA/pki"
# Client certificates last 24 hours: one made on an earlier day is renewed.
for who in planner:dev-planner agent:dev-agent approver:dev-approver operator:dev-operator \
  payee:api.example; do
  $P issue --dir "$DATA/pki" --role "${who%%:*}" --id "${who#*:}"
  $P renew --dir "$DATA/pki" --role "${who%%:*}" --id "${who#*:}" --if-within 2
done
