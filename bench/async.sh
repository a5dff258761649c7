#!/usr/bin/env bash
# Async throughput: jobs/s through a trivial function, with the embedded
# queue (SQLite in the state directory) and with NATS JetStream, against
# synchronous calls, in one run. Needs nats-server (apt-get install
# nats-server) for the second backend.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --features graphene-cli/nats --manifest-path ../Cargo.toml
BIN=$PWD/../target/release/graphene
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One gateway with the given extra serve flags; measures, then stops it.
measure() {
  local name=$1; shift
  local port; port=$(free_port)
  GRAPHENE_LOG=warn $BIN serve --listen 127.0.0.1:$port --state-dir "$WORK/state-$name" "$@" > "$WORK/graphene-$name.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 100); do [ -s "$WORK/state-$name/admin-token" ] && break; sleep 0.1; done
  export GRAPHENE_URL=http://127.0.0.1:$port GRAPHENE_TOKEN=$(cat "$WORK/state-$name/admin-token")
  (cd async && $BIN up -f stack.yml > "$WORK/up-$name.log" 2>&1) || { cat "$WORK/up-$name.log"; exit 1; }
  echo "== backend: $name"
  python3 async/measure.py "$GRAPHENE_URL" "$GRAPHENE_TOKEN" "${JOBS:-2000}"
  kill $pid; wait $pid 2>/dev/null || true
}

measure embedded
if command -v nats-server >/dev/null; then
  NATS_PORT=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT) 2>/dev/null && break; sleep 0.1; done
  measure nats --queue "nats://127.0.0.1:$NATS_PORT"
else
  echo "== backend: nats (skipped: no nats-server)"
fi
