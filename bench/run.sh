#!/usr/bin/env bash
# Measures, in one run on this machine:
#  (a) a trivial Python echo function through graphene vs the same handler
#      served directly by waitress+flask (what OpenFaaS's python3-http runs);
#  (b) the proxy alone: graphene vs nginx, each proxying to the same fast
#      upstream (nginx answering a fixed body).
# Needs wrk, nginx and python3 (installed with apt/pip when missing).
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}

. ./lib.sh
for tool in wrk nginx; do
  command -v $tool >/dev/null || as_root apt-get install -y -qq "$([ $tool = nginx ] && echo nginx-light || echo wrk)"
done
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import flask, waitress' 2>/dev/null || .venv/bin/pip install -q flask waitress

cargo build --release --quiet --manifest-path ../Cargo.toml
BIN=../target/release/graphene
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT


G_PORT=$(free_port); F_PORT=$(free_port); U_PORT=$(free_port); N_PORT=$(free_port)

# graphene with the echo function (python3-http, 2 workers: one per core).
GRAPHENE_LOG=warn $BIN serve --listen 127.0.0.1:$G_PORT --state-dir "$WORK/state" > "$WORK/graphene.log" 2>&1 &
PIDS+=($!)
sleep 0.5
GRAPHENE_URL=http://127.0.0.1:$G_PORT GRAPHENE_TOKEN=$(cat "$WORK/state/admin-token") $BIN up -f stack.yml > /dev/null 2>&1
wait_http "http://127.0.0.1:$G_PORT/function/echo-http"

# The same handler under waitress+flask.
.venv/bin/python flask_app.py "$F_PORT" > "$WORK/flask.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$F_PORT/"

# nginx: a fast upstream (one worker), and nginx as a reverse proxy to it
# (one worker per core, as graphene uses one thread per core), in separate
# processes as graphene and its upstream are.
nginx_conf() { # name workers server-block
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<NGINX
worker_processes $2;
error_log $WORK/$1/error.log;
pid $WORK/$1/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/$1;
  proxy_temp_path $WORK/$1;
  $3
}
NGINX
  nginx -c "$WORK/$1/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
}
nginx_conf upstream 1 "server { listen 127.0.0.1:$U_PORT; location / { return 200 \"ok\"; } }"
nginx_conf proxy "$(nproc)" "upstream fast { server 127.0.0.1:$U_PORT; keepalive 64; }
  server { listen 127.0.0.1:$N_PORT; location / { proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
wait_http "http://127.0.0.1:$N_PORT/"
curl -fs -X POST -H "Authorization: Bearer $(cat "$WORK/state/admin-token")" \
  -d "{\"service\":\"fast\",\"image\":\"external\",\"labels\":{\"com.graphene.public\":\"true\"},\"annotations\":{\"com.graphene.upstream\":\"http://127.0.0.1:$U_PORT\"}}" \
  "http://127.0.0.1:$G_PORT/system/functions"
wait_http "http://127.0.0.1:$G_PORT/function/fast"

G_PID=$(pgrep -f "serve --listen 127.0.0.1:$G_PORT" | head -1)
echo "graphene gateway RSS, idle with 2 functions deployed: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$G_PID/status) (target < 20 MiB)"
echo "wrk: 2 threads, $CONNS connections, $DURATION each, POST 5 bytes; $(nproc) cores shared with the load generator"
printf '%-44s %10s %9s %9s\n' "target" "req/s" "p50" "p99"
read -r g_rps g_p50 g_p99 g_err < <(load "http://127.0.0.1:$G_PORT/function/echo-http")
printf '%-44s %10s %9s %9s %s\n' "(a) graphene -> python echo (2 workers)" "$g_rps" "$g_p50" "$g_p99" "$g_err"
read -r f_rps f_p50 f_p99 f_err < <(load "http://127.0.0.1:$F_PORT/")
printf '%-44s %10s %9s %9s %s\n' "(a) waitress+flask, same handler" "$f_rps" "$f_p50" "$f_p99" "$f_err"
read -r p_rps p_p50 p_p99 p_err < <(load "http://127.0.0.1:$G_PORT/function/fast")
printf '%-44s %10s %9s %9s %s\n' "(b) graphene -> nginx upstream" "$p_rps" "$p_p50" "$p_p99" "$p_err"
read -r n_rps n_p50 n_p99 n_err < <(load "http://127.0.0.1:$N_PORT/")
printf '%-44s %10s %9s %9s %s\n' "(b) nginx -> nginx upstream" "$n_rps" "$n_p50" "$n_p99" "$n_err"
echo "(a) graphene / waitress+flask throughput: $(ratio "$g_rps" "$f_rps")x (target >= 2x)"
echo "(b) graphene / nginx proxy throughput:     $(ratio "$p_rps" "$n_rps")x (target >= 1x)"
