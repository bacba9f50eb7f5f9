#!/usr/bin/env bash
# docker/base/build.sh [IMAGE]: build the local Debian bookworm base image (Python 3.11, curl, CA
# bundle) with debootstrap and `docker import`, for where official images cannot be pulled. Does
# nothing when IMAGE (default wsapp-local/debian-python:bookworm) already exists.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

readonly DEFAULT_IMAGE=wsapp-local/debian-python:bookworm
readonly SUITE=bookworm
readonly PACKAGES=python3,python3-venv,ca-certificates,curl
readonly HOST_CA=/etc/ssl/certs/ca-certificates.crt
# Empty means debootstrap's default mirror (deb.debian.org).
readonly MIRROR=${DEBIAN_MIRROR:-}
TMP_DIR=""

bootstrap() {
  local rootfs=$1
  local -a args=(--variant=minbase "--include=$PACKAGES" "$SUITE" "$rootfs")
  [[ -n $MIRROR ]] && args+=("$MIRROR")
  log "debootstrap $SUITE into $rootfs"
  debootstrap "${args[@]}" >&2 || die "debootstrap failed"
}

# Trust the host's CA bundle (TLS-inspecting proxy). The copy under
# /usr/local/share/ca-certificates keeps it across update-ca-certificates runs.
install_host_ca() {
  local rootfs=$1
  [[ -r $HOST_CA ]] || die "host CA bundle $HOST_CA not readable"
  log "installing host CA bundle"
  cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  cp "$HOST_CA" "$rootfs/usr/local/share/ca-certificates/host-ca-bundle.crt"
}

# Container-friendly apt: security/updates suites, no kept .debs, no service starts during
# package installs (as Debian's official images).
configure_apt() {
  local rootfs=$1
  local mirror=${MIRROR:-http://deb.debian.org/debian}
  log "configuring apt"
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$rootfs/usr/sbin/policy-rc.d"
}

tidy_rootfs() {
  local rootfs=$1
  log "cleaning apt lists and caches"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs/debootstrap"
  # A stale resolv.conf/hostname from the host would shadow Docker's.
  : >"$rootfs/etc/resolv.conf"
  echo localhost >"$rootfs/etc/hostname"
}

import_rootfs() {
  local rootfs=$1 image=$2
  log "importing $rootfs as $image"
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >/dev/null
}

# The exit trap: unmount anything debootstrap left mounted (after a failure), then remove.
cleanup() {
  [[ -n $TMP_DIR && -d $TMP_DIR ]] || return 0
  local mnt
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(awk -v d="$TMP_DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$TMP_DIR"
}

main() {
  local image=${1:-$DEFAULT_IMAGE}
  if image_exists "$image"; then
    log "$image already present (cached)"
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap not installed"
  ((EUID == 0)) || die "debootstrap needs root"

  trap cleanup EXIT
  TMP_DIR=$(mktemp -d /var/tmp/wsapp-base.XXXXXX)
  local rootfs=$TMP_DIR/rootfs
  bootstrap "$rootfs"
  install_host_ca "$rootfs"
  configure_apt "$rootfs"
  tidy_rootfs "$rootfs"
  import_rootfs "$rootfs" "$image"
  log "built $image"
}

main "$@"
