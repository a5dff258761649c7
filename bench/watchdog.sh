#!/usr/bin/env bash
# The watchdog's own overhead, in one run on this machine: a trivial Python
# echo handler (echo-http/handler.py) in a function container's entrypoint,
#   graphene watchdog (2 forked workers, one per core)
# vs
#   OpenFaaS's of-watchdog (mode=http) in front of the python3-http
#   template (Flask behind waitress), the same handler;
# plus each watchdog process's resident memory after the load.
#
#   OF_WATCHDOG=/path/to/of-watchdog [PY3HTTP_TEMPLATE=/path/to/template/python3-http] bench/watchdog.sh
#
# of-watchdog and the template come from their public sources (openfaas/of-watchdog,
# openfaas/python-flask-template), which no package registry serves: build
# of-watchdog with Go (`GOFLAGS=-mod=vendor CGO_ENABLED=0 go build`). Without
# PY3HTTP_TEMPLATE, bench/flask_app.py (the template's index.py behaviour)
# serves the handler.
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
: "${OF_WATCHDOG:?set OF_WATCHDOG to an of-watchdog binary}"

. ./lib.sh
command -v wrk >/dev/null || as_root apt-get install -y -qq wrk
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import flask, waitress' 2>/dev/null || .venv/bin/pip install -q flask waitress

cargo build --release --quiet --manifest-path ../Cargo.toml
BIN=$(cd .. && pwd)/target/release/graphene
WORK=$(mktemp -d)
PIDS=()
# Each watchdog, and the Python processes it started.
cleanup() { for p in "${PIDS[@]}"; do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
# A process and all its descendants, summed.
tree_rss() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true) $(for c in $(pgrep -P "$1" || true); do pgrep -P "$c" || true; done); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  python3 -c "print(f'{$total/1024:.1f} MiB')"
}

# graphene watchdog on the function laid out as its image holds it.
(cd "$WORK" && cp -r "$OLDPWD/echo-http" . && cp "$OLDPWD/stack.yml" . && "$BIN" build --shrinkwrap ctx >/dev/null 2>&1)
python3 -m venv --without-pip "$WORK/ctx/echo-http/venv"
G_PORT=$(free_port)
(cd "$WORK" && exec env GRAPHENE_IMAGE_DIR="$WORK/ctx/echo-http" port=$G_PORT metrics_port=$(free_port) \
  GRAPHENE_WORKERS=2 TMPDIR="$WORK" "$BIN" watchdog > "$WORK/graphene.log" 2>&1) &
G_PID=$!
PIDS+=($G_PID)
wait_http "http://127.0.0.1:$G_PORT/"

# of-watchdog in front of the python3-http template, the same handler.
O_PORT=$(free_port)
mkdir -p "$WORK/of"
if [ -n "${PY3HTTP_TEMPLATE:-}" ]; then
  cp -r "$PY3HTTP_TEMPLATE"/. "$WORK/of/"
  cp echo-http/handler.py "$WORK/of/function/handler.py"
  FPROCESS="$(pwd)/.venv/bin/python index.py"
  UPSTREAM=5000
else
  UPSTREAM=$(free_port)
  FPROCESS="$(pwd)/.venv/bin/python $(pwd)/flask_app.py $UPSTREAM"
fi
(cd "$WORK/of" && exec env mode=http fprocess="$FPROCESS" upstream_url="http://127.0.0.1:$UPSTREAM" \
  port=$O_PORT TMPDIR="$WORK/of" "$OF_WATCHDOG" > "$WORK/of.log" 2>&1) &
O_PID=$!
PIDS+=($O_PID)
wait_http "http://127.0.0.1:$O_PORT/"

echo "wrk: 2 threads, $CONNS connections, $DURATION each, POST 5 bytes; $(nproc) cores shared with the load generator"
printf '%-52s %10s %9s %9s\n' "target" "req/s" "p50" "p99"
read -r g_rps g_p50 g_p99 g_err < <(load "http://127.0.0.1:$G_PORT/")
printf '%-52s %10s %9s %9s %s\n' "graphene watchdog -> python echo (2 workers)" "$g_rps" "$g_p50" "$g_p99" "$g_err"
read -r o_rps o_p50 o_p99 o_err < <(load "http://127.0.0.1:$O_PORT/")
printf '%-52s %10s %9s %9s %s\n' "of-watchdog -> python3-http (waitress+flask)" "$o_rps" "$o_p50" "$o_p99" "$o_err"
echo "graphene watchdog / of-watchdog throughput: $(ratio "$g_rps" "$o_rps")x (target >= 3x)"
echo "p99: graphene watchdog $g_p99, of-watchdog $o_p99 (target: lower)"
echo "graphene watchdog process RSS after the load: $(rss "$G_PID") (target < 15 MiB); with its Python processes: $(tree_rss "$G_PID")"
echo "of-watchdog process RSS after the load:       $(rss "$O_PID"); with its Python process: $(tree_rss "$O_PID")"
