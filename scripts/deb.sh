#!/usr/bin/env bash
# Build the Debian package: scripts/deb.sh [--version V] [--out DIR] [--binary PATH] [--fast]
# Builds the release binary (cargo build --release), generates its man pages and shell
# completions from the binary itself, and assembles memscale_VERSION_ARCH.deb in DIR
# (default target/debian) with dpkg-deb. Prints the package's path.
#   --version V   the package version (default: Cargo.toml's); tests build an older one
#   --binary PATH package this memscale binary, built already (tests/deb_systemd.rs
#                 packages the one cargo test built)
#   --fast        gzip -1 instead of xz (tests: xz takes about a minute on a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target=${CARGO_TARGET_DIR:-target}
out=$target/debian
build=1
bin=
compress=(-Zxz)
while (($#)); do
  case $1 in
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --binary) bin=$2; build=0; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deb: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for t in dpkg-deb dpkg-shlibdeps strip gzip; do
  command -v $t >/dev/null || { echo "deb: $t missing (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done
if ((build)); then
  cargo build --release --locked >&2
  bin=$target/release/memscale
fi
[[ -x $bin ]] || { echo "deb: no binary at $bin" >&2; exit 1; }
arch=$(dpkg --print-architecture)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root=$work/root
doc=$root/usr/share/doc/memscale
install -d "$root/DEBIAN" "$root/usr/bin" "$doc" "$root/usr/share/man/man5" "$root/usr/share/man/man8" \
  "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
  "$root/etc/memscale/policies" "$root/etc/logrotate.d" "$root/usr/share/memscale/alerts" \
  "$root/usr/share/memscale/dashboards" "$doc/examples/policies" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$root/usr/bin/memscale"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/memscale"
# Man pages and completions, from the binary's own command line and documentation.
"$bin" package-assets "$work/assets" >/dev/null
for m in "$work"/assets/man/*.[58]; do
  s=${m##*.}
  gzip -9n < "$m" > "$root/usr/share/man/man$s/$(basename "$m").gz"
done
install -m 0644 "$work/assets/completions/memscale" "$root/usr/share/bash-completion/completions/memscale"
install -m 0644 "$work/assets/completions/_memscale" "$root/usr/share/zsh/vendor-completions/_memscale"
install -m 0644 "$work/assets/completions/memscale.fish" "$root/usr/share/fish/vendor_completions.d/memscale.fish"
install -m 0644 systemd/memscale.service "$root/lib/systemd/system/memscale.service"
install -m 0644 systemd/memscale.sysusers "$root/usr/lib/sysusers.d/memscale.conf"
install -m 0644 packaging/memscale.tmpfiles "$root/usr/lib/tmpfiles.d/memscale.conf"
install -m 0644 packaging/memscale.toml "$root/etc/memscale/memscale.toml"
install -m 0644 policies/default.toml "$root/etc/memscale/policies/default.toml"
install -m 0644 packaging/memscale.logrotate "$root/etc/logrotate.d/memscale"
for p in policies/*.toml; do
  [[ $(basename "$p") == default.toml ]] || install -m 0644 "$p" "$doc/examples/policies/"
done
install -m 0644 alerts/memscale.rules.yml "$root/usr/share/memscale/alerts/"
install -m 0644 dashboards/*.json "$root/usr/share/memscale/dashboards/"
install -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 README.md "$doc/README.md"
gzip -9n < docs/config.md > "$doc/config.md.gz"
gzip -9n < docs/policies.md > "$doc/policies.md.gz"
# A native package's changelog: this version, dated by the commit it is built from.
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf 'memscale (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- memscale maintainers <maintainers@memscale.org>  %s\n' \
  "$version" "$commit" "$when" | gzip -9n > "$doc/changelog.gz"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
# The shared libraries' packages, as dpkg-shlibdeps finds them.
mkdir -p "$work/src/debian"
printf 'Source: memscale\n\nPackage: memscale\nArchitecture: any\n' > "$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/memscale" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || { echo "deb: dpkg-shlibdeps found no library dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: memscale
Version: $version
Architecture: $arch
Maintainer: memscale maintainers <maintainers@memscale.org>
Installed-Size: $size
Depends: $shlibs, systemd
Recommends: logrotate
Suggests: libvirt-daemon-system, prometheus
Section: admin
Priority: optional
Homepage: https://github.com/memscale/memscale
Description: automatic memory sizing of KVM guests
 memscale keeps every libvirt guest right-sized inside its memory envelope
 (floor and ceiling): it grows a guest before it runs short and gives idle
 memory back to the host, with the virtio-balloon, virtio-mem or DIMM
 hotplug, shares a host's memory when it is short and live-migrates guests
 off it, explaining every decision in an audit log and an HTTP API.
 .
 This package holds the daemon and its command line, a systemd unit,
 a default configuration and policy, man pages, shell completions, log
 rotation of the audit log, Prometheus alert rules and Grafana dashboards.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
mkdir -p "$out"
deb=$out/memscale_${version}_$arch.deb
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
