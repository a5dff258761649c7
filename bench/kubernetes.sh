#!/usr/bin/env bash
# The Kubernetes provider's call path, in one run on the test cluster
# (scripts/k8s-cluster.sh): a trivial echo function (echo-http/handler.py,
# one pod of 2 workers) called
#   (a) through graphene's gateway (graphene serve --provider kubernetes),
#   (b) directly on its pod IP (graphene watchdog, no gateway),
#   (c) through nginx proxying to the pod IP (what an ingress adds);
# and the time from a call at zero to its answer, split into the pod's
# start, the handler's import and the gateway's own share.
#
#   bench/kubernetes.sh            # DURATION=10s CONNS=32 by default
#
# Needs root (the test cluster), wrk and nginx (installed when missing),
# buildah and a loopback registry (scripts/oci-fixtures.sh).
set -euo pipefail
cd "$(dirname "$0")"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
. ./lib.sh
for tool in wrk nginx; do
  command -v $tool >/dev/null || as_root apt-get install -y -qq "$([ $tool = nginx ] && echo nginx-light || echo wrk)"
done
base_archive=$(../scripts/oci-fixtures.sh)
kubeconfig=$(../scripts/k8s-cluster.sh start | tail -1)
export KUBECONFIG=$kubeconfig
cargo build --release --quiet --features kubernetes --manifest-path ../Cargo.toml
BIN=$(cd .. && pwd)/target/release/graphene
WORK=$(mktemp -d)
PIDS=()
NS=graphene-bench
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:.0f} ms')" "$1"; }

# A registry on loopback with the base image, and the function built into it.
REG_PORT=$(free_port)
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$WORK/blobs" "$REG_PORT" > "$WORK/registry.yml"
docker-registry serve "$WORK/registry.yml" > /dev/null 2>&1 &
PIDS+=($!)
mkdir -p "$WORK/home/.config/containers"
printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$REG_PORT" > "$WORK/home/.config/containers/registries.conf"
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
HOME=$WORK/home skopeo copy --quiet "oci-archive:$base_archive:bookworm" "docker://127.0.0.1:$REG_PORT/base/python:bookworm"
kubectl delete namespace "$NS" --wait=true >/dev/null 2>&1 || true
kubectl create namespace "$NS" >/dev/null

G_PORT=$(free_port)
GRAPHENE_LOG=warn "$BIN" serve --provider kubernetes --functions-namespace "$NS" \
  --listen 127.0.0.1:$G_PORT --state-dir "$WORK/state" > "$WORK/graphene.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/state/admin-token" ] && curl -fs "http://127.0.0.1:$G_PORT/healthz" >/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$WORK/state/admin-token")
mkdir -p "$WORK/fn" && cp -r echo-http "$WORK/fn/"
cat > "$WORK/fn/stack.yml" <<YAML
version: 1.0
build:
  base:
    python3-http: 127.0.0.1:$REG_PORT/base/python:bookworm
functions:
  echo-http:
    lang: python3-http
    handler: ./echo-http
    image: 127.0.0.1:$REG_PORT/bench/echo-http:1
    namespace: $NS
    labels:
      com.openfaas.scale.min: "1"
      com.openfaas.scale.max: "1"
      com.graphene.public: "true"
    annotations:
      com.graphene.workers: 2
YAML
(cd "$WORK/fn" && HOME=$WORK/home GRAPHENE_URL=http://127.0.0.1:$G_PORT GRAPHENE_TOKEN=$TOKEN \
  "$BIN" up --oci --wait 120 > "$WORK/up.log" 2>&1) || { cat "$WORK/up.log"; exit 1; }
G_URL="http://127.0.0.1:$G_PORT/function/echo-http.$NS"
wait_http "$G_URL"
POD_IP=$(kubectl get pods -n "$NS" -l faas_function=echo-http -o jsonpath='{.items[0].status.podIP}')
P_URL="http://$POD_IP:8080/"
wait_http "$P_URL"

# nginx proxying to the pod (one worker per core, keep-alive upstream).
N_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGINX
worker_processes $(nproc);
error_log $WORK/nginx/error.log;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  upstream pod { server $POD_IP:8080; keepalive 64; }
  server { listen 127.0.0.1:$N_PORT; location / { proxy_pass http://pod; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_http "http://127.0.0.1:$N_PORT/"

echo "wrk: 2 threads, $CONNS connections, $DURATION each, POST 5 bytes; $(nproc) cores shared by the cluster, the gateway and the load generator"
printf '%-46s %10s %9s %9s\n' "target" "req/s" "p50" "p99"
read -r g_rps g_p50 g_p99 g_err < <(load "$G_URL")
printf '%-46s %10s %9s %9s %s\n' "(a) graphene gateway -> pod" "$g_rps" "$g_p50" "$g_p99" "$g_err"
read -r d_rps d_p50 d_p99 d_err < <(load "$P_URL")
printf '%-46s %10s %9s %9s %s\n' "(b) directly on the pod IP" "$d_rps" "$d_p50" "$d_p99" "$d_err"
read -r n_rps n_p50 n_p99 n_err < <(load "http://127.0.0.1:$N_PORT/")
printf '%-46s %10s %9s %9s %s\n' "(c) nginx -> pod" "$n_rps" "$n_p50" "$n_p99" "$n_err"
echo "graphene / direct: $(ratio "$g_rps" "$d_rps")x (target >= 0.9x); graphene / nginx: $(ratio "$g_rps" "$n_rps")x (target >= 1x)"

# From zero: scale to 0, wait for the pod to go, then one call, timed. The
# gateway's own share is what is left once the wait for a ready pod (its
# graphene_cold_start_wait_seconds) is taken off.
GRAPHENE_URL=http://127.0.0.1:$G_PORT GRAPHENE_TOKEN=$TOKEN "$BIN" scale echo-http --replicas 0 -n "$NS" > /dev/null
for _ in $(seq 1 600); do
  [ -z "$(kubectl get pods -n "$NS" -l faas_function=echo-http -o name 2>/dev/null)" ] && break; sleep 0.1
done
cold_sum() {
  curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$G_PORT/metrics" |
    awk -v f="echo-http.$NS" '$1 ~ /^graphene_cold_start_wait_seconds_sum/ && index($1, f) {print $2}' | head -1
}
before=$(cold_sum); before=${before:-0}
total=$(curl -s -o /dev/null -w '%{time_total}' -X POST -d x "$G_URL")
after=$(cold_sum); after=${after:-0}
pod=$(kubectl get pods -n "$NS" -l faas_function=echo-http -o json)
read -r start_s ready_s < <(python3 - "$pod" <<'PY'
import json, sys
from datetime import datetime
p = json.loads(sys.argv[1])["items"][0]
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
created = t(p["metadata"]["creationTimestamp"])
started = t(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
ready = [c for c in p["status"]["conditions"] if c["type"] == "Ready"][0]
print(started - created, t(ready["lastTransitionTime"]) - started)
PY
)
wait_s=$(python3 -c "print(float('$after') - float('$before'))")
overhead=$(python3 -c "print(max(0.0, float('$total') - float('$wait_s')))")
echo "from zero: $(ms "$total") in all: waiting for a ready pod $(ms "$wait_s") (pod created -> container started $(ms "$start_s"), started -> ready: import and probe $(ms "$ready_s"); the API's times are whole seconds), the gateway's own share $(ms "$overhead") (target < 50 ms)"
