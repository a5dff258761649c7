#!/usr/bin/env bash
# A real single-node Kubernetes 1.20 cluster for integration tests, built from
# source once and cached outside the repository (no registry ships Kubernetes
# binaries to the test machines; the newest vendored Kubernetes source they
# reach is Debian bookworm's `kubernetes` source package, 1.20.2).
#
#   scripts/k8s-cluster.sh build            # install Debian packages, fetch, patch and
#                                           #   build the binaries and the pause image
#   scripts/k8s-cluster.sh start            # build if needed, start, wait until the node
#                                           #   is Ready; prints the admin kubeconfig path
#   scripts/k8s-cluster.sh stop             # stop everything started (pods' containers
#                                           #   too) and undo the network set-up
#   scripts/k8s-cluster.sh status           # running or not, and the kubeconfig path
#   scripts/k8s-cluster.sh import ARCHIVE NAME
#                                           # load an OCI or docker archive into the
#                                           #   cluster's containerd as image NAME
#   scripts/k8s-cluster.sh registry HOST:PORT
#                                           # let containerd pull from a plain-HTTP
#                                           #   registry at HOST:PORT
#   scripts/k8s-cluster.sh reset            # stop, then forget the cluster's state
#                                           #   (etcd data, images, certificates)
#
# Everything is root-only (containers, iptables, bridges). Progress goes to
# stderr; `start` and `status` print the kubeconfig path as their last line
# (status exits 1 when the cluster is not running). `start` is idempotent,
# and cleans up what a crashed or killed run left before starting again.
#
# Layout (GRAPHENE_K8S_CACHE, default /var/cache/graphene-tests/kubernetes):
#   src/ gopath/ go-build/   source, GOPATH link and Go build cache
#   bin/                     kube-apiserver, kube-controller-manager,
#                            kube-scheduler, kubelet, kube-proxy, graphene-cri
#   images/pause.tar         the pause image (docker archive)
#   .done/                   one marker per finished build step
#   run/                     the cluster (GRAPHENE_K8S_RUN): logs/, pki/,
#                            admin.kubeconfig, etcd/, containerd/, kubelet/
#
# Network (all on this machine). Pods reach other pods, Services, and the
# host at the node IP only (any port); nothing else, on or beyond this
# machine, and they have no DNS server (nameserver 127.0.0.1):
#   node IP       10.245.0.1   (GRAPHENE_K8S_NODE_IP) on a port-less bridge
#                               gk8s-node; the API server listens on it:
#                               https://10.245.0.1:6443
#   pod CIDR      10.244.0.0/16, this node 10.244.0.0/24 (bridge gk8s-cni0)
#   service CIDR  10.96.0.0/16 (routed to gk8s-node), kubernetes = 10.96.0.1
#   NodePorts     on 127.0.0.1 and the node IP only
#   ports         etcd 127.0.0.1:23790-23791 (GRAPHENE_K8S_ETCD_PORT), kubelet
#                 node IP:10250 and 127.0.0.1:10248, kube-proxy 127.0.0.1:10249
#                 and :10256, controller-manager :10257, scheduler :10259
# (after changing GRAPHENE_K8S_NODE_IP, `reset`: certificates name the IP)
# No cluster DNS (no CoreDNS): pods use ClusterIPs or *_SERVICE_HOST.
#
# Registries: containerd pulls over plain HTTP from loopback (127.0.0.1:ANY,
# localhost:ANY) with no set-up; for another host (e.g. the node IP) run
# `k8s-cluster.sh registry HOST:PORT` (takes effect at once). Images whose
# tag is not `latest` are used from the local store when present
# (imagePullPolicy IfNotPresent); `import` makes such images from archives.
set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

K8S_VERSION=1.20.2
cache=${GRAPHENE_K8S_CACHE:-/var/cache/graphene-tests/kubernetes}
run=${GRAPHENE_K8S_RUN:-$cache/run}
state=/run/graphene-k8s                 # sockets and containerd's state (tmpfs)
node_ip=${GRAPHENE_K8S_NODE_IP:-10.245.0.1}
node_name=${GRAPHENE_K8S_NODE_NAME:-graphene-node}
pod_cidr=10.244.0.0/16
node_pod_cidr=10.244.0.0/24
pod_gateway=10.244.0.1
service_cidr=10.96.0.0/16
kubernetes_service_ip=10.96.0.1
api_port=${GRAPHENE_K8S_API_PORT:-6443}
etcd_port=${GRAPHENE_K8S_ETCD_PORT:-23790}
etcd_peer_port=$((etcd_port + 1))
node_bridge=gk8s-node
pod_bridge=gk8s-cni0
pause_image=k8s.gcr.io/pause:3.2
ready_timeout=${GRAPHENE_K8S_READY_TIMEOUT:-180}

src=$cache/src/kubernetes-$K8S_VERSION
gopath=$cache/gopath
bin=$cache/bin
marks=$cache/.done
goroot=/usr/lib/go-1.19
sock=$state/containerd.sock
kubeconfig=$run/admin.kubeconfig
components=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[k8s-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[k8s-cluster] error: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (containers, bridges and iptables need it)"; }
lock() { mkdir -p "$cache"; exec 9>"$cache/.lock"; flock 9; }
done_step() { [ -e "$marks/$1" ]; }
mark_step() { mkdir -p "$marks"; date -u +%FT%TZ > "$marks/$1"; }

# ---------------------------------------------------------------- build ---

install_packages() {
  local missing=() pair
  # command-or-file:package
  for pair in "$goroot/bin/go:golang-1.19-go" \
              "/usr/share/gocode/src/github.com/modern-go/reflect2/go_above_118.go:golang-github-modern-go-reflect2-dev" \
              etcd:etcd-server containerd:containerd containerd-shim-runc-v2:containerd \
              runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
              /usr/lib/cni/host-local:containernetworking-plugins \
              /usr/lib/cni/loopback:containernetworking-plugins \
              iptables:iptables conntrack:conntrack socat:socat openssl:openssl \
              curl:curl gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev \
              dpkg-source:dpkg-dev umoci:umoci skopeo:skopeo flock:util-linux \
              ip:iproute2 ss:iproute2 ps:procps findmnt:util-linux; do
    local what=${pair%%:*} pkg=${pair#*:}
    if [[ $what == /* ]]; then [ -e "$what" ] && continue
    else command -v "$what" >/dev/null && continue; fi
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2 || true
  # policy-rc.d keeps Debian from starting etcd or containerd as services.
  local policy=/usr/sbin/policy-rc.d added=
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { [ -n "$added" ] && rm -f $policy; die "apt-get install ${missing[*]} failed"; }
  [ -n "$added" ] && rm -f $policy
  return 0
}

fetch_source() {
  done_step source && [ -d "$src" ] && return 0
  log "fetching Debian bookworm's kubernetes source package ($K8S_VERSION)"
  if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding a deb-src entry for bookworm (/etc/apt/sources.list.d/graphene-bookworm-src.sources)"
    cat > /etc/apt/sources.list.d/graphene-bookworm-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq >&2 || die "apt-get update failed"
  fi
  mkdir -p "$cache/src"
  (cd "$cache/src" && apt-get source --download-only kubernetes >&2) \
    || die "apt-get source kubernetes failed (is a bookworm deb-src line configured?)"
  local dsc
  dsc=$(ls "$cache"/src/kubernetes_*really"$K8S_VERSION"*.dsc 2>/dev/null | tail -1)
  [ -n "$dsc" ] || die "no kubernetes $K8S_VERSION .dsc in $cache/src"
  rm -rf "$src" "$src.tmp"
  # dpkg-source applies Debian's patches (one is a CVE fix).
  (cd "$cache/src" && dpkg-source --no-check -x "$dsc" "$src.tmp" >&2) || die "dpkg-source -x failed"
  mv "$src.tmp" "$src"
  rm -f "$marks"/patch* "$marks"/openapi "$marks"/bin-* "$marks"/graphene-cri
  mark_step source
}

# Bump when the patches change: binaries are then rebuilt (quickly, from the
# Go cache) on the next build.
patch_version=2

patch_source() {
  done_step "patch-$patch_version" && return 0
  log "patching the source"
  # reflect2 1.0.1 (vendored) crashes with Go >= 1.18; Debian's 1.0.2 works.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -a /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  # The kubelet sets kernel.panic, kernel.panic_on_oops and vm.overcommit_memory
  # for the whole machine; this is a shared test machine: leave them alone.
  local f=$src/pkg/kubelet/cm/container_manager_linux.go
  sed -i -e '/utilsysctl\.KernelPanic: /d' -e '/utilsysctl\.KernelPanicOnOops: /d' \
         -e '/utilsysctl\.VMOvercommitMemory: /d' "$f"
  if grep -qE 'utilsysctl\.(KernelPanic|KernelPanicOnOops|VMOvercommitMemory):' "$f"; then
    die "could not patch the kubelet's sysctl settings in $f"
  fi
  # The kubelet links the AWS, Azure and GCP registry credential providers
  # even with -tags providerless; they look for cloud metadata services.
  # Nothing here pulls from a cloud registry: drop them.
  sed -i -E '/^\s*_ "k8s\.io\/kubernetes\/pkg\/credentialprovider\/(aws|azure|gcp)"$/d' \
    "$src/cmd/kubelet/app/plugins.go" "$src/cmd/kubelet/app/options/globalflags.go"
  if grep -qE 'pkg/credentialprovider/(aws|azure|gcp)"' \
       "$src/cmd/kubelet/app/plugins.go" "$src/cmd/kubelet/app/options/globalflags.go"; then
    die "could not remove the cloud credential providers from the kubelet"
  fi
  rm -f "$marks"/patch* "$marks"/bin-*
  mark_step "patch-$patch_version"
}

go_env() {
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
  export GOROOT=$goroot GOPATH=$gopath GO111MODULE=off CGO_ENABLED=0 GOENV=off GOFLAGS='' \
         GOCACHE=$cache/go-build GOPROXY=off PATH=$goroot/bin:$PATH
  unset GOTOOLCHAIN
}

gen_openapi() {
  done_step openapi && return 0
  log "generating pkg/generated/openapi with the vendored openapi-gen"
  mkdir -p "$cache/tools"
  go build -o "$cache/tools/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2 \
    || die "building openapi-gen failed"
  # The same package list as Makefile.generated_files' KUBE_OPENAPI target.
  local dirs
  dirs=$(cd "$src" && find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \
           -type f -name '*.go' -print0 \
         | xargs -0 grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
         | sed -e 's|^\./||' -e 's|^staging/src/|vendor/|' \
         | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
         | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  [ -n "$dirs" ] || die "found no packages tagged for openapi-gen"
  (cd "$gopath/src/k8s.io/kubernetes" && "$cache/tools/openapi-gen" --logtostderr -v 1 \
     -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
     -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
     -r "$cache/tools/openapi-violations.report" >"$cache/tools/openapi-gen.log" 2>&1) \
    || { tail -20 "$cache/tools/openapi-gen.log" >&2; die "openapi-gen failed"; }
  [ -s "$src/pkg/generated/openapi/zz_generated.openapi.go" ] || die "openapi-gen wrote nothing"
  mark_step openapi
}

build_binary() {
  local name=$1 pkg=$2
  done_step "bin-$name" && [ -x "$bin/$name" ] && return 0
  log "building $name"
  local v=k8s.io/kubernetes/vendor/k8s.io ldflags="-s -w" key val
  for kv in gitVersion=v$K8S_VERSION gitMajor=1 gitMinor=20 gitTreeState=clean \
            gitCommit=debian-bookworm buildDate=$(date -u +%FT%TZ); do
    key=${kv%%=*} val=${kv#*=}
    ldflags+=" -X $v/component-base/version.$key=$val -X $v/client-go/pkg/version.$key=$val"
  done
  local start=$SECONDS
  mkdir -p "$bin"
  # providerless: no cloud providers, so nothing probes cloud metadata.
  go build -tags providerless -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg" >&2 \
    || die "building $name failed"
  mv "$bin/$name.tmp" "$bin/$name"
  log "built $name in $((SECONDS - start)) s"
  mark_step "bin-$name"
}

# A minimal CRI client (the Kubernetes tree vendors the CRI API) so that `stop`
# can stop and remove pod sandboxes through containerd, which also tears down
# their networks; no crictl package exists in Debian.
build_cri_tool() {
  done_step graphene-cri && [ -x "$bin/graphene-cri" ] && return 0
  mkdir -p "$src/cmd/graphene-cri"
  cat > "$src/cmd/graphene-cri/main.go" <<'EOF'
// graphene-cri SOCKET pods|rmp-all: list, or stop and remove, every pod sandbox.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
)

func main() {
	if len(os.Args) != 3 || (os.Args[2] != "pods" && os.Args[2] != "rmp-all") {
		fmt.Fprintln(os.Stderr, "usage: graphene-cri SOCKET pods|rmp-all")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dialCtx, dialCancel := context.WithTimeout(ctx, 10*time.Second)
	defer dialCancel()
	conn, err := grpc.DialContext(dialCtx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	client := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := client.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "list pod sandboxes:", err)
		os.Exit(1)
	}
	failed := false
	for _, p := range resp.Items {
		name := p.Metadata.Namespace + "/" + p.Metadata.Name
		if os.Args[2] == "pods" {
			fmt.Printf("%s %s %s\n", p.Id[:13], p.State, name)
			continue
		}
		if _, err := client.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			fmt.Fprintln(os.Stderr, "stop", name, err)
			failed = true
			continue
		}
		if _, err := client.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			fmt.Fprintln(os.Stderr, "remove", name, err)
			failed = true
			continue
		}
		fmt.Println("removed", name)
	}
	if failed {
		os.Exit(1)
	}
}
EOF
  build_binary graphene-cri k8s.io/kubernetes/cmd/graphene-cri
  mark_step graphene-cri
}

build_pause_image() {
  done_step pause-image && [ -s "$cache/images/pause.tar" ] && return 0
  log "building the pause image ($pause_image) from build/pause/linux/pause.c"
  local work
  work=$(mktemp -d "$cache/pause.XXXXXX")
  gcc -Os -Wall -Werror -static -DVERSION=v3.4-graphene -o "$work/pause" "$src/build/pause/linux/pause.c" >&2 \
    || { rm -rf "$work"; die "compiling pause.c failed"; }
  strip "$work/pause"
  (
    set -e
    cd "$work"
    umoci init --layout layout
    umoci new --image layout:pause
    umoci unpack --image layout:pause bundle
    install -m 0755 pause bundle/rootfs/pause
    umoci repack --image layout:pause bundle
    umoci config --image layout:pause --config.entrypoint /pause --config.user 65535:65535
    umoci gc --layout layout
    mkdir -p "$cache/images"
    rm -f "$cache/images/pause.tar"
    skopeo copy --quiet oci:layout:pause "docker-archive:$cache/images/pause.tar:$pause_image"
  ) >&2 || { rm -rf "$work"; die "packing the pause image failed"; }
  rm -rf "$work"
  mark_step pause-image
}

cmd_build() {
  need_root
  local start=$SECONDS
  install_packages
  fetch_source
  patch_source
  go_env
  gen_openapi
  build_binary kube-proxy k8s.io/kubernetes/cmd/kube-proxy
  build_binary kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
  build_binary kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
  build_binary kubelet k8s.io/kubernetes/cmd/kubelet
  build_binary kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
  build_cri_tool
  build_pause_image
  # The tests and benchmarks drive the cluster with kubectl: built from the
  # same source where the machine has none (no package ships it).
  if ! command -v kubectl >/dev/null; then
    build_binary kubectl k8s.io/kubernetes/cmd/kubectl
    ln -sf "$bin/kubectl" /usr/local/bin/kubectl
  fi
  log "build complete ($((SECONDS - start)) s): $bin"
}

built() {
  local s
  for s in source "patch-$patch_version" openapi bin-kube-proxy bin-kube-scheduler bin-kube-controller-manager \
           bin-kubelet bin-kube-apiserver graphene-cri pause-image; do
    done_step "$s" || return 1
  done
}

# ------------------------------------------------------------- processes ---

pidfile() { echo "$run/pids/$1.pid"; }

# The pid of a component if it runs (checked against its command line, so a
# reused pid does not count).
running_pid() {
  local f pid exe
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] || return 1
  exe=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $exe == *"$1"* ]] || return 1
  echo "$pid"
}

# launch NAME COMMAND...: a daemon in its own session, logging to logs/NAME.log.
launch() {
  local name=$1; shift
  mkdir -p "$run/logs" "$run/pids"
  log "starting $name (log: $run/logs/$name.log)"
  printf '\n==== %s start %s\n' "$name" "$(date -u +%FT%TZ)" >> "$run/logs/$name.log"
  env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
      AWS_EC2_METADATA_DISABLED=true NO_PROXY='*' \
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$(pidfile "$name")" "$@" \
    >> "$run/logs/$name.log" 2>&1 < /dev/null 9>&- &
  for _ in $(seq 50); do [ -s "$(pidfile "$name")" ] && break; sleep 0.1; done
}

# terminate NAME...: SIGTERM, then SIGKILL after 10 s, all of them at once.
terminate() {
  local name pid pids=() alive
  for name in "$@"; do
    if pid=$(running_pid "$name"); then
      log "stopping $name ($pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 100); do
    alive=
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for name in "$@"; do rm -f "$(pidfile "$name")"; done
}

# wait_for WHAT SECONDS COMPONENT COMMAND...: poll COMMAND until it succeeds;
# fail with the component's log tail when the deadline passes or it exits.
wait_for() {
  local what=$1 secs=$2 comp=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$comp" ] && ! running_pid "$comp" >/dev/null; then
      tail -25 "$run/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $run/logs/$comp.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      [ -n "$comp" ] && { tail -25 "$run/logs/$comp.log" >&2 || true; }
      die "timed out after ${secs}s waiting for $what${comp:+ (log: $run/logs/$comp.log)}"
    fi
    sleep 0.5
  done
}

# -------------------------------------------------------------- start-up ---

token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

make_pki() {
  local pki=$run/pki
  [ -s "$pki/tokens.csv" ] && [ -s "$pki/apiserver.crt" ] && return 0
  log "making certificates, keys and tokens ($pki)"
  mkdir -p "$pki"; chmod 700 "$pki"
  (
    set -e
    cd "$pki"
    openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 3650 \
      -subj /CN=graphene-k8s-ca -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature,keyEncipherment 2>/dev/null
    sign() { # name subject extensions
      openssl req -new -nodes -newkey rsa:2048 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver /CN=kube-apiserver "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$node_name,IP:$node_ip,IP:$kubernetes_service_ip,IP:127.0.0.1"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    {
      echo "$(token),admin,admin,\"system:masters\""
      echo "$(token),system:node:$node_name,kubelet,\"system:nodes\""
      echo "$(token),system:kube-proxy,kube-proxy,"
      echo "$(token),system:kube-controller-manager,kube-controller-manager,"
      echo "$(token),system:kube-scheduler,kube-scheduler,"
    } > tokens.csv.tmp
    mv tokens.csv.tmp tokens.csv
    chmod 600 ./*.key tokens.csv
  ) || die "making certificates failed"
}

token_of() { awk -F, -v u="$1" '$2 == u { print $1 }' "$run/pki/tokens.csv"; }

write_kubeconfig() { # file user
  local ca tok
  ca=$(base64 -w0 < "$run/pki/ca.crt")
  tok=$(token_of "$2")
  [ -n "$tok" ] || die "no token for $2 in $run/pki/tokens.csv"
  cat > "$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: graphene
  cluster:
    server: https://$node_ip:$api_port
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $tok
contexts:
- name: graphene
  context:
    cluster: graphene
    user: $2
    namespace: default
current-context: graphene
EOF
  chmod 600 "$1.tmp"; mv "$1.tmp" "$1"
}

sysctl_set() { # key value: remember the first value seen so `stop` can restore it
  local key=$1 val=$2 path=/proc/sys/${1//.//} cur
  [ -w "$path" ] || return 0
  cur=$(cat "$path")
  grep -qs "^$key=" "$run/sysctl.orig" || echo "$key=$cur" >> "$run/sysctl.orig"
  [ "$cur" = "$val" ] || echo "$val" > "$path" 2>/dev/null || log "warning: could not set $key=$val"
}

setup_network() {
  sysctl_set net.ipv4.ip_forward 1
  sysctl_set net.bridge.bridge-nf-call-iptables 1
  sysctl_set net.bridge.bridge-nf-call-ip6tables 1
  # route_localnet: kube-proxy sets it for NodePorts on 127.0.0.1; restored on stop.
  sysctl_set net.ipv4.conf.all.route_localnet "$(cat /proc/sys/net/ipv4/conf/all/route_localnet)"
  # The node IP lives on a bridge without ports (this kernel has no dummy
  # driver); the service range is routed there so ClusterIPs stay local.
  ip link show "$node_bridge" >/dev/null 2>&1 || ip link add "$node_bridge" type bridge
  ip addr replace "$node_ip/32" dev "$node_bridge"
  ip link set "$node_bridge" up
  ip route replace "$service_cidr" dev "$node_bridge" src "$node_ip"
  # Pods may talk to pods, to the node IP and their gateway, and receive
  # answers from the host; nothing is forwarded out of the pod bridge. In the
  # mangle table, which kube-proxy and the kubelet leave alone.
  local t
  for t in iptables ip6tables; do
    $t -t mangle -N GRAPHENE-K8S-FWD 2>/dev/null || $t -t mangle -F GRAPHENE-K8S-FWD
    $t -t mangle -N GRAPHENE-K8S-IN 2>/dev/null || $t -t mangle -F GRAPHENE-K8S-IN
    $t -t mangle -C FORWARD -j GRAPHENE-K8S-FWD 2>/dev/null || $t -t mangle -I FORWARD -j GRAPHENE-K8S-FWD
    $t -t mangle -C INPUT -j GRAPHENE-K8S-IN 2>/dev/null || $t -t mangle -I INPUT -j GRAPHENE-K8S-IN
  done
  iptables -t mangle -A GRAPHENE-K8S-FWD -i "$pod_bridge" -o "$pod_bridge" -j RETURN
  iptables -t mangle -A GRAPHENE-K8S-FWD -i "$pod_bridge" -j DROP
  iptables -t mangle -A GRAPHENE-K8S-IN -i "$pod_bridge" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -t mangle -A GRAPHENE-K8S-IN -i "$pod_bridge" -d "$node_ip" -j RETURN
  iptables -t mangle -A GRAPHENE-K8S-IN -i "$pod_bridge" -d "$pod_gateway" -j RETURN
  iptables -t mangle -A GRAPHENE-K8S-IN -i "$pod_bridge" -j DROP
  ip6tables -t mangle -A GRAPHENE-K8S-FWD -i "$pod_bridge" -j DROP
  ip6tables -t mangle -A GRAPHENE-K8S-IN -i "$pod_bridge" -j DROP
}

write_configs() {
  mkdir -p "$run/cni/net.d" "$run/cni/ipam" "$run/containerd/certs.d" "$run/containerd/root" \
           "$run/kubelet" "$run/kubelet-pki" "$run/kubelet-plugins" "$run/etcd" "$state"
  chmod 700 "$run/etcd"
  cat > "$run/cni/net.d/10-graphene.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "graphene-k8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$pod_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$node_pod_cidr", "gateway": "$pod_gateway" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$run/cni/ipam"
      }
    }
  ]
}
EOF
  cat > "$run/containerd/config.toml" <<EOF
version = 2
root = "$run/containerd/root"
state = "$state/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$run/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # No CAP_SYS_RESOURCE in this sandbox: never lower a container's OOM score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    # One folder per HOST:PORT with a hosts.toml (see the registry command);
    # loopback registries need none: containerd uses plain HTTP for them.
    config_path = "$run/containerd/certs.d"
EOF
  cat > "$run/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $run/pki/ca.crt }
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
protectKernelDefaults: false
clusterDomain: cluster.local
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
containerLogMaxSize: 10Mi
containerLogMaxFiles: 2
EOF
  write_kubeconfig "$run/kubelet.kubeconfig" "system:node:$node_name"
  write_kubeconfig "$run/kube-proxy.kubeconfig" system:kube-proxy
  write_kubeconfig "$run/controller-manager.kubeconfig" system:kube-controller-manager
  write_kubeconfig "$run/scheduler.kubeconfig" system:kube-scheduler
}

api_get() { # path: GET as admin, body on stdout
  # (a curl user agent gets pretty-printed JSON)
  curl -fsS --max-time 5 -A k8s-cluster.sh --cacert "$run/pki/ca.crt" -H "Authorization: Bearer $(token_of admin)" \
    "https://$node_ip:$api_port$1"
}
# (grep without -q: an early exit would fail the pipeline under pipefail)
# Ready, with a heartbeat from this start (a stopped node stays Ready for
# ~40 s), and without the node lifecycle's taints (not-ready, unreachable).
node_ready() {
  local node beat
  node=$(api_get "/api/v1/nodes/$node_name") || return 1
  beat=$(grep -o '"type":"Ready","status":"True","lastHeartbeatTime":"[^"]*"' <<< "$node" | cut -d'"' -f12)
  [ -n "$beat" ] && [[ ! $beat < $started_at ]] && ! grep '"key":"node.kubernetes.io/' <<< "$node" >/dev/null
}
default_sa_ready() { api_get /api/v1/namespaces/default/serviceaccounts/default | grep '"secrets"' >/dev/null; }
service_ip_answers() {
  curl -fsS --max-time 3 --cacert "$run/pki/ca.crt" -H "Authorization: Bearer $(token_of admin)" \
    "https://$kubernetes_service_ip/healthz" | grep ok >/dev/null
}

port_free() { # addr port
  ! ss -Htln "( sport = :$2 )" 2>/dev/null | awk '{print $4}' | grep -E "^(\*|0\.0\.0\.0|\[::\]|$1):$2\$" >/dev/null
}

cmd_start() {
  need_root
  lock
  if cluster_healthy; then
    log "already running"
    echo "$kubeconfig"
    return 0
  fi
  local c
  for c in "${components[@]}"; do
    if running_pid "$c" >/dev/null; then
      log "a previous start is partly running; stopping it first"
      break
    fi
  done
  # (also clears what a crashed or killed run left: shims, mounts, rules)
  do_stop
  built || cmd_build
  local start=$SECONDS
  started_at=$(date -u +%FT%TZ)
  for c in "$node_ip:$api_port" "127.0.0.1:$etcd_port" "127.0.0.1:$etcd_peer_port" "$node_ip:10250" \
           "127.0.0.1:10248" "127.0.0.1:10249" "127.0.0.1:10256" "127.0.0.1:10257" "127.0.0.1:10259"; do
    port_free "${c%:*}" "${c##*:}" || die "port ${c##*:} is already in use (needed for $c)"
  done
  mkdir -p "$run"
  make_pki
  setup_network
  write_configs
  local pki=$run/pki

  launch containerd containerd --config "$run/containerd/config.toml"
  wait_for "containerd" 30 containerd ctr --address "$sock" version
  if ! ctr --address "$sock" -n k8s.io images ls -q | grep -x "$pause_image" >/dev/null; then
    log "importing the pause image"
    ctr --address "$sock" -n k8s.io images import "$cache/images/pause.tar" >&2 \
      || die "importing $cache/images/pause.tar into containerd failed"
  fi

  launch etcd etcd --name graphene --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "graphene=http://127.0.0.1:$etcd_peer_port" --initial-cluster-state new \
    --logger zap --log-outputs stderr
  wait_for "etcd" 30 etcd curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health"

  launch kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$service_cidr" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false --event-ttl 1h
  wait_for "the API server" 90 kube-apiserver api_get /readyz

  launch kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$run/controller-manager.kubeconfig" --bind-address 127.0.0.1 --port 0 \
    --cert-dir "$run/controller-manager-pki" --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" \
    --cluster-signing-key-file "$pki/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr "$pod_cidr" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$service_cidr" --profiling=false
  launch kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$run/scheduler.kubeconfig" --bind-address 127.0.0.1 --port 0 \
    --cert-dir "$run/scheduler-pki" --leader-elect=false --profiling=false

  launch kubelet "$bin/kubelet" --config "$run/kubelet/config.yaml" \
    --kubeconfig "$run/kubelet.kubeconfig" --root-dir "$run/kubelet" --cert-dir "$run/kubelet-pki" \
    --hostname-override "$node_name" --node-ip "$node_ip" \
    --container-runtime remote --container-runtime-endpoint "unix://$sock" \
    --runtime-request-timeout 10m --pod-infra-container-image "$pause_image" \
    --volume-plugin-dir "$run/kubelet-plugins" --oom-score-adj 0 --resolv-conf=
  launch kube-proxy "$bin/kube-proxy" --kubeconfig "$run/kube-proxy.kubeconfig" \
    --hostname-override "$node_name" --bind-address "$node_ip" --cluster-cidr "$pod_cidr" \
    --proxy-mode iptables --iptables-min-sync-period 100ms --nodeport-addresses "127.0.0.0/8,$node_ip/32" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --oom-score-adj 0 \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256

  write_kubeconfig "$kubeconfig" admin
  wait_for "node $node_name to be Ready" "$ready_timeout" kubelet node_ready
  wait_for "the default service account" 60 kube-controller-manager default_sa_ready
  wait_for "the kubernetes Service's ClusterIP ($kubernetes_service_ip)" 60 kube-proxy service_ip_answers
  log "cluster ready in $((SECONDS - start)) s: node $node_name ($node_ip), API https://$node_ip:$api_port"
  echo "$kubeconfig"
}

# ------------------------------------------------------------------- stop ---

cluster_healthy() {
  local c
  for c in "${components[@]}"; do running_pid "$c" >/dev/null || return 1; done
  api_get /readyz >/dev/null 2>&1
}

# Delete jumps to KUBE-* chains from the built-in chains, then the chains
# (the kubelet's and kube-proxy's).
remove_kube_iptables() {
  local t table rule chain
  for t in iptables ip6tables; do
    for table in filter nat mangle; do
      while read -r rule; do
        eval "$t -t $table -D ${rule#-A }" 2>/dev/null || true
      done < <($t -t $table -S 2>/dev/null \
               | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' || true)
      for chain in $($t -t $table -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
        $t -t $table -F "$chain" 2>/dev/null || true
      done
      for chain in $($t -t $table -S 2>/dev/null | awk '/^-N KUBE-/ { print $2 }'); do
        $t -t $table -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_network() {
  local t c
  for t in iptables ip6tables; do
    for c in FORWARD:GRAPHENE-K8S-FWD INPUT:GRAPHENE-K8S-IN; do
      while $t -t mangle -D "${c%%:*}" -j "${c#*:}" 2>/dev/null; do :; done
      $t -t mangle -F "${c#*:}" 2>/dev/null || true
      $t -t mangle -X "${c#*:}" 2>/dev/null || true
    done
  done
  remove_kube_iptables
  ip link del "$pod_bridge" 2>/dev/null || true
  ip link del "$node_bridge" 2>/dev/null || true
  rm -rf "$run/cni/ipam"
  if [ -s "$run/sysctl.orig" ]; then
    local kv
    while IFS= read -r kv; do
      echo "${kv#*=}" > "/proc/sys/$(echo "${kv%%=*}" | tr . /)" 2>/dev/null || true
    done < "$run/sysctl.orig"
    rm -f "$run/sysctl.orig"
  fi
}

do_stop() {
  terminate kubelet kube-proxy kube-scheduler kube-controller-manager
  if running_pid containerd >/dev/null; then
    if [ -x "$bin/graphene-cri" ]; then
      log "stopping and removing pods' containers"
      "$bin/graphene-cri" "$sock" rmp-all >&2 || log "warning: some pod sandboxes could not be removed"
    fi
  fi
  terminate containerd
  # containerd's shims outlive it: end those that belong to this containerd.
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep "containerd-shim.* -address $sock " >/dev/null; then
      log "ending a leftover shim (${p#/proc/}) and its containers"
      # a container's first process takes its pid namespace down with it
      # shellcheck disable=SC2046 # pids, one a word
      kill -KILL $(ps -o pid= --ppid "${p#/proc/}") "${p#/proc/}" 2>/dev/null || true
    fi
  done
  terminate kube-apiserver etcd
  # Mounts left by the kubelet (secret volumes) and containerd (rootfs, shm).
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^($run|$state)/" | sort -r || true); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  for m in /run/netns/cni-*; do
    # namespaces of sandboxes containerd did not get to remove
    [ -e "$m" ] || continue
    [ -n "$(ip netns pids "${m##*/}" 2>/dev/null)" ] || ip netns delete "${m##*/}" 2>/dev/null || true
  done
  # the kubelet's pod cgroups (cgroup v1 hierarchies or v2), once empty
  for m in $(find /sys/fs/cgroup -maxdepth 2 -type d -name kubepods 2>/dev/null || true); do
    find "$m" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$state"
  [ -d "$run" ] && remove_network
  return 0
}

cmd_stop() {
  need_root
  lock
  do_stop
  log "stopped"
}

cmd_reset() {
  need_root
  lock
  do_stop
  log "removing the cluster state in $run"
  rm -rf "$run"
}

cmd_status() {
  local c any=0 pid
  for c in "${components[@]}"; do
    if pid=$(running_pid "$c"); then echo "$c: running ($pid)" >&2; any=1
    else echo "$c: stopped" >&2; fi
  done
  if [ $any = 1 ] && cluster_healthy; then
    echo "running: node $node_name ($node_ip), API https://$node_ip:$api_port" >&2
    echo "$kubeconfig"
    return 0
  fi
  [ $any = 1 ] && echo "partly running (try: $0 stop; $0 start)" >&2 || echo "stopped" >&2
  built && echo "built: $bin" >&2 || echo "not built yet ($0 build)" >&2
  return 1
}

# import ARCHIVE NAME: ARCHIVE is an OCI archive (oci-archive, optionally
# FILE:TAG when it holds several images), a docker archive, or any skopeo
# source (e.g. oci:DIR:TAG); it becomes image NAME in the cluster.
cmd_import() {
  need_root
  [ $# = 2 ] || die "usage: $0 import ARCHIVE NAME   (e.g. /var/cache/graphene-tests/python-bookworm.oci.tar localhost/python:bookworm)"
  running_pid containerd >/dev/null || die "the cluster is not running ($0 start)"
  local source=$1 name=$2 file=${1%%:*}
  if [ -f "$1" ] || [ -f "$file" ]; then
    if tar tf "$file" 2>/dev/null | grep -x 'index.json\|\./index.json' >/dev/null; then source=oci-archive:$1
    else source=docker-archive:$1; fi
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  log "converting $source"
  skopeo copy --quiet "$source" "docker-archive:$tmp/image.tar:$name" >&2 || die "skopeo could not read $source"
  ctr --address "$sock" -n k8s.io images import "$tmp/image.tar" >&2 || die "containerd could not import $name"
  log "imported $name"
}

# registry HOST:PORT: containerd pulls from http://HOST:PORT (loopback hosts
# need no set-up).
cmd_registry() {
  need_root
  [ $# = 1 ] && [[ $1 == *:* ]] || die "usage: $0 registry HOST:PORT"
  local dir=$run/containerd/certs.d/$1
  mkdir -p "$dir"
  cat > "$dir/hosts.toml" <<EOF
server = "http://$1"

[host."http://$1"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
EOF
  log "containerd pulls $1/... over plain HTTP ($dir/hosts.toml)"
}

case ${1:-} in
  build) need_root; lock; cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  import) shift; cmd_import "$@" ;;
  registry) shift; cmd_registry "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
