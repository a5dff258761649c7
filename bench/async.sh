#!/usr/bin/env bash
# Async throughput: jobs/s through a trivial function with the embedded
# queue (SQLite in the state directory), against synchronous calls.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet --manifest-path ../Cargo.toml
BIN=$PWD/../target/release/graphene
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRAPHENE_LOG=warn $BIN serve --listen 127.0.0.1:$PORT --state-dir "$WORK/state" > "$WORK/graphene.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/state/admin-token" ] && break; sleep 0.1; done
export GRAPHENE_URL=http://127.0.0.1:$PORT GRAPHENE_TOKEN=$(cat "$WORK/state/admin-token")
(cd async && $BIN up -f stack.yml > "$WORK/up.log" 2>&1) || { cat "$WORK/up.log"; exit 1; }
echo "backend: embedded (SQLite, fsync per write)"
python3 async/measure.py "$GRAPHENE_URL" "$GRAPHENE_TOKEN" "${JOBS:-2000}"
