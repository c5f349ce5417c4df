#!/usr/bin/env bash
# Install what the memscale test bed needs, idempotently (fast when all is there):
#   * Debian packages (apt-get update only when one is missing),
#   * a guest kernel: the newest linux-image-6.1.0-*-cloud-amd64, unpacked with dpkg -x into
#     cache/ (skipped when one is there; --refresh-kernel looks for a newer one),
#   * cache/initrd.gz: busybox, the virtio modules and guest-init.sh as /init; rebuilt only
#     when guest-init.sh, the module list, busybox or the kernel changed.
#
# usage: install.sh [--packages-only] [--refresh-kernel] [--extra PKG...]
#   --packages-only   only the Debian packages (also: MEMSCALE_TESTBED_PACKAGES_ONLY=1)
#   --refresh-kernel  download the newest cloud kernel if it is newer than the cached one
#   --extra PKG...    more Debian packages to make sure of
# Prints:
#   kernel=/var/tmp/memscale-testbed/cache/vmlinuz
#   initrd=/var/tmp/memscale-testbed/cache/initrd.gz
set -euo pipefail
# shellcheck source=scripts/testbed/common.sh
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

PACKAGES=(qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev busybox-static
  cpio kmod iproute2 socat pkg-config python3 util-linux gzip
  prometheus etcd-server systemd) # the last three: promtool, etcd, systemd-analyze for the tests
# Loaded in this order by the guest's /init (no modules.dep in the initramfs). The serial
# console (8250) is built into the cloud kernel.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon virtio_mem)

packages_only=${MEMSCALE_TESTBED_PACKAGES_ONLY:-0}
refresh=0
while (($#)); do
  case $1 in
    --packages-only) packages_only=1 ;;
    --refresh-kernel) refresh=1 ;;
    --extra)
      shift
      PACKAGES+=("$@")
      break
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
need_root

# --- Debian packages --------------------------------------------------------------------
missing=()
installed=" $(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null |
  awk '$2 == "ii" {printf "%s ", $1}' || true)"
for p in "${PACKAGES[@]}"; do
  [[ $installed == *" $p "* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  note "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
((packages_only)) && exit 0

# --- guest kernel -----------------------------------------------------------------------
mkdir -p "$TB_CACHE"
exec 8>"$TB_CACHE/.install.lock"
flock 8 # two test runs installing at once would race on the cache

newest_kernel() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' 2>/dev/null |
    awk '{print $1}' | sort -V | tail -1
}
current=$(cat "$TB_CACHE/kernel-package" 2>/dev/null || true)
if [[ -z $current || ! -d $TB_CACHE/$current/boot ]] || ((refresh)); then
  pkg=$(newest_kernel)
  if [[ -z $pkg ]] || ((refresh)); then
    apt-get update -qq >&2
    pkg=$(newest_kernel)
  fi
  [[ -n $pkg ]] || die "no linux-image-6.1.0-*-cloud-amd64 package in the apt lists"
  if [[ ! -d $TB_CACHE/$pkg/boot ]]; then
    note "downloading $pkg"
    tmp=$(mktemp -d "$TB_CACHE/.dl.XXXXXX")
    (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >&2) ||
      die "apt-get download $pkg failed"
    dpkg -x "$tmp"/*.deb "$tmp/x"
    rm -rf "${TB_CACHE:?}/$pkg"
    mv "$tmp/x" "$TB_CACHE/$pkg"
    rm -rf "$tmp"
  fi
  echo "$pkg" >"$TB_CACHE/kernel-package.new"
  mv "$TB_CACHE/kernel-package.new" "$TB_CACHE/kernel-package"
  current=$pkg
fi
kdir=$TB_CACHE/$current
vmlinuz=$(find "$kdir/boot" -maxdepth 1 -name 'vmlinuz-*' | head -1)
[[ -n $vmlinuz ]] || die "no vmlinuz in $kdir/boot"
if [[ $(readlink "$TB_CACHE/vmlinuz" 2>/dev/null) != "$vmlinuz" ]]; then
  ln -sfn "$vmlinuz" "$TB_CACHE/vmlinuz.new"
  mv -T "$TB_CACHE/vmlinuz.new" "$TB_CACHE/vmlinuz"
fi

# --- initramfs --------------------------------------------------------------------------
moddir=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -1)
[[ -n $moddir ]] || die "no modules in $kdir"
declare -A modpath=()
loaded=" "
for m in "${MODULES[@]}"; do
  f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
  [[ -n $f ]] || die "module $m is not in $current"
  modpath[$m]=$f
  # the fixed order must respect the dependencies
  for d in $(modinfo -F depends "$f" | tr ',' ' '); do
    [[ $loaded == *" $d "* ]] || die "module $m needs $d loaded before it: fix MODULES in $0"
  done
  loaded+="$m "
done

sum=$(
  {
    sha256sum "$TB_HERE/guest-init.sh" | cut -d' ' -f1
    printf '%s\n' "${MODULES[@]}"
    echo "$current"
    sha256sum /bin/busybox | cut -d' ' -f1
  } | sha256sum | cut -c1-16
)
if [[ ! -s $TB_CACHE/initrd.gz || $(cat "$TB_CACHE/initrd.sum" 2>/dev/null) != "$sum" ]]; then
  note "building initrd.gz"
  root=$(mktemp -d "$TB_CACHE/.root.XXXXXX")
  chmod 0755 "$root"
  mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,hog,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  install -m 0755 "$TB_HERE/guest-init.sh" "$root/init"
  for m in "${MODULES[@]}"; do
    case ${modpath[$m]} in
      *.xz) xz -dc "${modpath[$m]}" >"$root/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "${modpath[$m]}" >"$root/lib/modules/$m.ko" ;;
      *) cp "${modpath[$m]}" "$root/lib/modules/$m.ko" ;;
    esac
  done
  printf '%s\n' "${MODULES[@]}" >"$root/lib/modules/order"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) >"$TB_CACHE/initrd.gz.new"
  mv "$TB_CACHE/initrd.gz.new" "$TB_CACHE/initrd.gz"
  echo "$sum" >"$TB_CACHE/initrd.sum"
  rm -rf "$root"
fi

echo "kernel=$TB_CACHE/vmlinuz"
echo "initrd=$TB_CACHE/initrd.gz"
