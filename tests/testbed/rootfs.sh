#!/usr/bin/env bash
# A Debian 12 root file system with systemd, for booting a real systemd in a container
# (tests/deb_systemd.rs): debootstrap --variant=minbase, cached in the test bed's cache and
# rebuilt only when the package list changes. About 4 minutes once; instant afterwards.
# Prints the cached directory's path. Each test copies it and boots the copy.
set -euo pipefail
. "$(dirname "$0")/common.sh"
# libvirt-clients brings libvirt0, the package's one library dependency, so installing the
# .deb inside needs no download; logrotate runs the package's rotation.
INCLUDE=systemd,systemd-sysv,dbus,libvirt-clients,curl,logrotate
ROOT=$CACHE/rootfs-bookworm
mkdir -p "$CACHE"
# Test files run side by side: one builds, the others wait for it.
exec 8>"$CACHE/rootfs.lock"
flock 8
sum=$(printf '%s\n' bookworm minbase "$INCLUDE" | sha256sum | cut -c1-16)
if [[ ! -x $ROOT/lib/systemd/systemd || $(cat "$ROOT.sum" 2>/dev/null) != "$sum" ]]; then
  command -v debootstrap >/dev/null || die "debootstrap missing (tests/testbed/install.sh installs it)"
  mkdir -p "$CACHE"
  tmp=$ROOT.new
  rm -rf "$tmp"
  echo "testbed: debootstrap of a Debian 12 rootfs into $ROOT (about 4 minutes, once)" >&2
  debootstrap --variant=minbase --include="$INCLUDE" bookworm "$tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed; its log: $CACHE/debootstrap.log"
  # No getty on a pipe console, and apt's lists are not needed: the .deb's dependencies are in.
  rm -f "$tmp"/etc/systemd/system/getty.target.wants/*
  apt_clean=("$tmp"/var/cache/apt/archives/*.deb); rm -f "${apt_clean[@]}"
  rm -rf "$ROOT"; mv "$tmp" "$ROOT"
  echo "$sum" > "$ROOT.sum"
fi
echo "$ROOT"
