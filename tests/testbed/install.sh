#!/usr/bin/env bash
# Install what the test bed needs, idempotently: Debian packages, a guest kernel, and a tiny
# busybox initramfs with the virtio modules and the demand generator. Fast when all is there.
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ ${1:-} == --help ]]; then echo "usage: install.sh [--openstack|--openstack-compute] [--extra PKG...]"; exit 0; fi
# One install at a time: scripts/test.sh's background OpenStack bring-up, the test files and
# the two test threads of a file all call this; two apt-get or debconf runs at once fail on
# their locks ("config.dat is locked by another process", seen on a fresh machine).
# flock -o: the lock stays with flock itself, so no process started here can keep it.
if [[ -z ${MEMSCALE_INSTALL_LOCKED:-} ]]; then
  mkdir -p "$STATE"
  MEMSCALE_INSTALL_LOCKED=1 exec flock -o "$STATE/install.lock" "$0" "$@"
fi
PKGS=(qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev busybox-static cpio kmod iproute2 socat pkg-config xz-utils prometheus systemd protobuf-compiler libprotobuf-dev etcd-server etcd-client
  debootstrap systemd-container dpkg-dev binutils lintian)
# OpenStack (Keystone, Placement, nova-api; tests/testbed/openstack.sh): asked for with
# --openstack. Their postinst scripts are told not to set up databases, endpoints or users.
OS_PKGS=(keystone placement-api nova-api uwsgi-core uwsgi-plugin-python3 mariadb-server python3-pymysql python3-openstackclient curl)
# --openstack-compute adds the rest of a compute cloud (tests/testbed/nova-compute.sh):
# RabbitMQ, nova-conductor, nova-scheduler, nova-compute (libvirt), glance-api and a
# neutron-server without agents (Nova asks Neutron's API at boot and at live migration).
OSC_PKGS=(rabbitmq-server nova-conductor nova-scheduler nova-compute nova-compute-qemu glance-api neutron-server)
if [[ ${1:-} == --openstack-compute ]]; then
  set -- --openstack "${@:2}"
  PKGS+=("${OSC_PKGS[@]}")
  if ! dpkg -s glance-api neutron-server >/dev/null 2>&1; then
    {
      for k in configure_db configure_rabbit configure_ksat; do
        echo "glance-common glance/$k boolean false"; echo "neutron-common neutron/$k boolean false"
      done
      for p in glance-common neutron-common; do echo "$p $p/dbconfig-install boolean false"; done
      echo "glance-api glance/configure_api-endpoint boolean false"
      echo "neutron-common neutron/configure_nova boolean false"
    } | debconf-set-selections
  fi
fi
if [[ ${1:-} == --openstack ]]; then
  shift
  PKGS+=("${OS_PKGS[@]}")
  if ! dpkg -s keystone placement-api nova-api >/dev/null 2>&1; then
    {
      for p in keystone placement-api nova-common nova-api; do echo "$p $p/dbconfig-install boolean false"; done
      cat <<'EOF'
keystone keystone/configure_db boolean false
keystone keystone/create-admin-tenant boolean false
keystone keystone/register-endpoint boolean false
placement-common placement/configure_db boolean false
placement-common placement/configure_ksat boolean false
placement-api placement/register-endpoint boolean false
nova-common nova/configure_db boolean false
nova-common nova/configure_rabbit boolean false
nova-common nova/configure_ksat boolean false
nova-api nova/register-endpoint boolean false
EOF
    } | debconf-set-selections
  fi
fi
if [[ ${1:-} == --extra ]]; then shift; PKGS+=("$@"); fi
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "testbed: installing ${missing[*]}" >&2
  # No package may start its service (libvirtd, RabbitMQ, Nova...): the test bed runs its own.
  # A policy-rc.d that refuses every start, for the install only, unless one is there already.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$CACHE"
MODS=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon virtio_mem)
if [[ ! -s $CACHE/vmlinuz || ! -d $CACHE/modules ]]; then
  find_pkg() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1; }
  pkg=$(find_pkg)
  if [[ -z $pkg ]]; then apt-get update -qq; pkg=$(find_pkg); fi
  [[ -n $pkg ]] || die "no linux-image-6.1.0-*-cloud-amd64 package found"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || die "cannot download $pkg"
  dpkg -x "$tmp"/*.deb "$tmp/x"
  rm -rf "$CACHE/modules"; mkdir -p "$CACHE/modules"
  for m in "${MODS[@]}"; do
    f=$(find "$tmp/x/lib/modules" -name "$m.ko*" | head -1)
    [[ -n $f ]] || die "module $m not in $pkg"
    case $f in
      *.xz) xz -dc "$f" > "$CACHE/modules/$m.ko" ;;
      *) cp "$f" "$CACHE/modules/$m.ko" ;;
    esac
  done
  cp "$tmp"/x/boot/vmlinuz-* "$CACHE/vmlinuz.new" && mv "$CACHE/vmlinuz.new" "$CACHE/vmlinuz"
  echo "$pkg" > "$CACHE/kernel-package"
  rm -rf "$tmp"
fi
# The initramfs: rebuilt only when the init script or the module set changed.
sum=$( (cat "$HERE/guest-init.sh"; printf '%s\n' "${MODS[@]}"; cat "$CACHE/kernel-package") | sha256sum | cut -c1-16)
if [[ ! -s $CACHE/initrd.gz || $(cat "$CACHE/initrd.sum" 2>/dev/null) != "$sum" ]]; then
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,run,tmp,hog,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  cp "$HERE/guest-init.sh" "$root/init"; chmod +x "$root/init"
  cp "$CACHE"/modules/*.ko "$root/lib/modules/"
  (cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -9) > "$CACHE/initrd.gz.new"
  mv "$CACHE/initrd.gz.new" "$CACHE/initrd.gz"
  echo "$sum" > "$CACHE/initrd.sum"
  rm -rf "$root"
fi
# The Debian 12 rootfs the package test boots under systemd-nspawn (about 4 minutes once).
# scripts/test.sh builds it in the background instead, while the code compiles (the test
# waits for it on rootfs.sh's lock).
if [[ -z ${MEMSCALE_TESTBED_ROOTFS_ASYNC:-} ]]; then "$HERE/rootfs.sh" >/dev/null; fi
echo "kernel=$CACHE/vmlinuz"
echo "initrd=$CACHE/initrd.gz"
