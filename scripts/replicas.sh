#!/usr/bin/env bash
# Two signer replicas on one PostgreSQL: the replicas demo.
#   ./scripts/replicas.sh
# Provisions the development token, keys, PKI and pack as scripts/dev.sh does
# (scripts/dev-provision.sh, under data/ or $PAYWARDEN_DATA), starts a throwaway
# PostgreSQL cluster in a temporary directory (scripts/pgcluster.py: run as the
# postgres OS user under root, password in a file of mode 0600), starts two
# `paywarden serve` on two ports with store.url on that one database, sends
# $PAYMENTS payments (6) alternately through both (scripts/replicas_demo.py),
# stops the signers, runs `paywarden audit verify` on the shared log and stops
# and removes everything it started, whatever happens (trap on exit). The ports
# are free ones unless REPLICA_PORTS="PORT1 PORT2" names them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then ./scripts/install.sh; fi

./scripts/dev-provision.sh >/dev/null
DATA="$(cd "${PAYWARDEN_DATA:-data}" && pwd)"
if [ -n "${PAYWARDEN_DATA:-}" ]; then
  SOFTHSM2_CONF="$DATA/softhsm.conf"
else
  SOFTHSM2_CONF="$PWD/softhsm.conf"
fi
export SOFTHSM2_CONF
read -r -a ports <<<"${REPLICA_PORTS:-0 0}"
run="$DATA/replicas"
rm -rf "$run"
mkdir -p "$run"

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${PG_PID:-}" ]; then
    exec {PG[1]}>&- # its standard input closes: it stops the cluster and removes it
    wait "$PG_PID" 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

coproc PG { exec .venv/bin/python scripts/pgcluster.py; }
read -r url <&"${PG[0]}" || { echo "replicas.sh: PostgreSQL did not start" >&2; exit 1; }
read -r password_file <&"${PG[0]}"
echo "replicas.sh: PostgreSQL at $url (password in $password_file)"

.venv/bin/python scripts/keys.py --label paywarden-dev export \
  --pin-file "$DATA/dev/DEVELOPMENT-ONLY-user.pin" --key audit.v1 --out "$run/audit.v1.pem"

addrs=()
for n in 1 2; do
  cat >"$run/replica-$n.toml" <<TOML
# Replica $n of scripts/replicas.sh: the development set-up, the store on PostgreSQL.
[server]
listen = "127.0.0.1:${ports[$((n - 1))]}"
tls_cert = "$DATA/pki/server.crt"
tls_key = "$DATA/pki/server.key"
client_ca = "$DATA/pki/ca.crt"

[hsm]
pin_file = "$DATA/dev/DEVELOPMENT-ONLY-user.pin"
softhsm_conf = "$SOFTHSM2_CONF"

[store]
url = "$url"
password_file = "$password_file"

[metrics]
listen = ""

[policy]
dir = "$DATA/policy"
TOML
  : >"$run/replica-$n.log"
  .venv/bin/paywarden serve --config "$run/replica-$n.toml" >>"$run/replica-$n.log" 2>&1 &
  pids+=($!)
  # The first replica migrates the empty database before the second one starts.
  for _ in $(seq 600); do
    line="$(grep -m1 '^paywarden: serving on ' "$run/replica-$n.log" || true)"
    if [ -n "$line" ] || ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ -z "$line" ]; then
    echo "replicas.sh: replica $n did not start:" >&2
    cat "$run/replica-$n.log" >&2
    exit 1
  fi
  addr="$(echo "$line" | awk '{print $4}')"
  echo "replicas.sh: replica $n serving on $addr (pid ${pids[-1]})"
  addrs+=(--addr "$addr")
done

.venv/bin/python scripts/replicas_demo.py "${addrs[@]}" --pki "$DATA/pki" \
  --payments "${PAYMENTS:-6}"

for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do wait "$pid"; done
pids=()
echo "replicas.sh: both replicas stopped; the shared audit log:"
.venv/bin/paywarden audit verify --config "$run/replica-1.toml" --public-key "$run/audit.v1.pem"
