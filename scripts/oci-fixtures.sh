#!/usr/bin/env bash
# What the OCI image tests need, installed once and cached outside the
# repository: buildah, podman, crun, skopeo, umoci, a loopback registry
# (Debian's docker-registry), and a Python base image made locally (no
# public registry is reachable from the test machines): a minimal Debian
# bookworm with python3 and python3-venv, packed as an OCI archive.
#
#   scripts/oci-fixtures.sh        # prints the base image archive's path
#
# GRAPHENE_TEST_CACHE chooses the cache folder (default
# /var/cache/graphene-tests).
set -euo pipefail

cache=${GRAPHENE_TEST_CACHE:-/var/cache/graphene-tests}
archive=$cache/python-bookworm.oci.tar

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

missing=()
for tool in buildah:buildah podman:podman crun:crun skopeo:skopeo umoci:umoci \
            debootstrap:debootstrap docker-registry:docker-registry; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# crun needs the hugetlb controller off the unified hierarchy on hybrid
# cgroup hosts; podman needs limits it can set in a container here.
if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/hugetlb/tasks ]; then
  as_root mkdir -p /sys/fs/cgroup/hugetlb 2>/dev/null || true
  as_root mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null || true
fi
conf=/etc/containers/containers.conf
if [ -w /etc/containers ] && ! grep -qs '^default_ulimits' "$conf"; then
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000","nproc=32768:32768"]\n' >> "$conf"
fi

if [ ! -s "$archive" ]; then
  as_root mkdir -p "$cache"
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'as_root rm -rf "$work"' EXIT
  echo "building the Python base image (debootstrap, a few minutes; cached in $cache)" >&2
  as_root debootstrap --variant=minbase --include=python3,python3-venv \
    bookworm "$work/rootfs" http://deb.debian.org/debian >&2
  as_root rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/*
  (
    cd "$work"
    umoci init --layout layout >&2
    umoci new --image layout:bookworm >&2
    umoci unpack --rootless --image layout:bookworm bundle >&2 2>/dev/null || umoci unpack --image layout:bookworm bundle >&2
    as_root cp -a rootfs/. bundle/rootfs/
    umoci repack --image layout:bookworm bundle >&2
    umoci config --image layout:bookworm --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.env LANG=C.UTF-8 --config.cmd python3 >&2
    umoci gc --layout layout >&2
    skopeo copy --quiet oci:layout:bookworm "oci-archive:$archive.tmp:bookworm" >&2
  )
  mv "$archive.tmp" "$archive"
fi
echo "$archive"
