#!/usr/bin/env bash
# The whole test suite, on a clean machine: installs what is missing, then
# checks formatting, lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
apt_install() {
  if command -v apt-get >/dev/null; then
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "warning: cannot install $* (no apt-get)" >&2
  fi
}

# Python with venv and pip: the runtime's functions and their builds.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3 python3-venv python3-pip
fi
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
# bubblewrap: the sandbox functions run in (tests also cover running without).
command -v bwrap >/dev/null || apt_install bubblewrap || echo "warning: no bubblewrap; sandbox tests run unsandboxed" >&2
# Prometheus: a real scraper of /metrics in the tests.
command -v prometheus >/dev/null || apt_install prometheus || echo "warning: no prometheus; its tests are skipped" >&2

# NATS JetStream: the second backend of asynchronous calls.
command -v nats-server >/dev/null || apt_install nats-server
# A real OpenID provider (npm oidc-provider) for the OIDC tests.
command -v npm >/dev/null || apt_install nodejs npm
if [ ! -d tests/oidc/node_modules/oidc-provider ] || [ tests/oidc/package-lock.json -nt tests/oidc/node_modules ]; then
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

# OCI images: buildah, podman, a loopback registry, and a Python base image
# made locally once (cached outside the repository).
./scripts/oci-fixtures.sh > /dev/null
# A real single-node Kubernetes for the Kubernetes provider's tests, built
# from Debian's source package once (about 4 minutes on 2 cores) and cached
# outside the repository; the tests start it.
./scripts/k8s-cluster.sh build

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
