#!/usr/bin/env bash
# Scale from zero: a handler that imports numpy and fits a model at import.
# Prints, in one run, the time from a call to a function at zero replicas to
# its response (replica forked from the warm parent; and with fork: false)
# against starting the handler's Python from scratch, and the time for a
# burst of 50 concurrent calls at zero to all complete.
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
(cd coldstart && $BIN up -f stack.yml > "$WORK/up.log" 2>&1) || { cat "$WORK/up.log"; exit 1; }
IMAGE=$(dirname "$(dirname "$(dirname "$(ls "$WORK"/state/local/images/*/venv/bin/python | head -1)")")")
python3 coldstart/measure.py "$GRAPHENE_URL" "$GRAPHENE_TOKEN" "$IMAGE/venv/bin/python" "$IMAGE/function"
