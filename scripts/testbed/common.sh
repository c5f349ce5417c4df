# shellcheck shell=bash
# shellcheck disable=SC2034 # the settings are used by the scripts that source this file
# Shared settings and helpers of the memscale test bed scripts (sourced, not run).
#
# State: ${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}
#   cache/          guest kernel (dpkg -x tree), vmlinuz, initrd.gz
#   hosts/NAME/     one private host: run/ lib/ etc/ log/ cache/ bound over /run,
#                   /var/lib/libvirt, /etc/libvirt, /var/log/libvirt, /var/cache/libvirt
#                   inside its mount namespace; index holds its INDEX.

TB_STATE=${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}
TB_CACHE=$TB_STATE/cache
TB_HOSTS=$TB_STATE/hosts
TB_BRIDGE=msbr0
TB_NET=10.77.0
TB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The only addresses this test bed ever uses: 10.77.0.1 on msbr0 in the root namespace,
# 10.77.0.(10+INDEX) inside netns msh-NAME.

die() {
  echo "testbed: $*" >&2
  exit 1
}
note() { echo "testbed: $*" >&2; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

valid_host() { [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,10}$ ]] || die "bad host name '$1' (1-11 of a-z 0-9 -)"; }
valid_guest() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] || die "bad guest name '$1'"; }

host_dir() { echo "$TB_HOSTS/$1"; }
host_sock() { echo "$TB_HOSTS/$1/run/libvirt/libvirt-sock"; }
host_unix_uri() { echo "qemu+unix:///system?socket=$(host_sock "$1")"; }
host_index() {
  [[ -s $TB_HOSTS/$1/index ]] || die "host $1 has never been up (no $TB_HOSTS/$1/index)"
  cat "$TB_HOSTS/$1/index"
}
host_ip() { echo "$TB_NET.$((10 + $(host_index "$1")))"; }
host_tcp_uri() { echo "qemu+tcp://$(host_ip "$1")/system"; }
host_pid() { # HOST DAEMON: pid of a running daemon of that host, or nothing
  local p
  p=$(cat "$TB_HOSTS/$1/run/$2.pid" 2>/dev/null) || return 1
  [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && echo "$p"
}
host_alive() { host_pid "$1" libvirtd >/dev/null; }

# virsh against a test bed host over its unix socket (works from the root namespace).
vsh() {
  local h=$1
  shift
  virsh -q -c "$(host_unix_uri "$h")" "$@"
}

# Paths (as seen from the root namespace) of a guest's files on a host.
guest_console() { echo "$TB_HOSTS/$1/log/qemu/$2.console.log"; }
guest_ctl_sock() { echo "$TB_HOSTS/$1/lib/qemu/$2.ctl.sock"; }
