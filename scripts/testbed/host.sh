#!/usr/bin/env bash
# Private libvirt "hosts" on this one machine, for the memscale test bed.
# Each host NAME is: network namespace msh-NAME (eth0 = 10.77.0.(10+INDEX)/24, the peer
# msv-NAME in bridge msbr0 = 10.77.0.1 in the root namespace) + a private mount and UTS
# namespace (hostname msh-NAME) where hosts/NAME/{run,lib,etc,log,cache} are bound over
# /run, /var/lib/libvirt, /etc/libvirt, /var/log/libvirt, /var/cache/libvirt; its own
# virtlogd and libvirtd (TCP on 16509 without auth, unix socket without auth).
#
# usage:
#   host.sh up NAME INDEX          start (idempotent: on a running host only prints), prints
#                                    unix=qemu+unix:///system?socket=<STATE>/hosts/NAME/run/libvirt/libvirt-sock
#                                    tcp=qemu+tcp://10.77.0.<10+INDEX>/system
#   host.sh down NAME              kill its qemu, libvirtd, virtlogd by PID, delete netns and
#                                  veth (the bridge too once no host is left); keeps
#                                  hosts/NAME/log for post-mortems (the next up wipes it)
#   host.sh down-all               down every host of this state dir
#   host.sh uri NAME [unix|tcp]    one URI (default unix)
#   host.sh list                   NAME INDEX up|down, one line each
#   host.sh pid NAME [libvirtd|virtlogd]   PID of a daemon of the host
#   host.sh restart-libvirtd NAME  stop libvirtd and start it again in the same namespaces
#                                  (the guests keep running; clients see the connection drop)
#   host.sh exec NAME CMD...       run CMD inside the host's namespaces
#   host.sh virsh NAME ARGS...     virsh -c <unix URI> ARGS
# NAME: 1-11 of a-z 0-9 -; INDEX: 1..200 (distinct per running host).
# State: ${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}/hosts/NAME.
set -euo pipefail
# shellcheck source=scripts/testbed/common.sh
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

# Run inside the new namespaces (host.sh __inner NAME): bind the private dirs, start daemons.
inner() {
  local d=$1 name=$2
  mount --bind "$d/run" /run
  mount --bind "$d/lib" /var/lib/libvirt
  mount --bind "$d/etc" /etc/libvirt
  mount --bind "$d/log" /var/log/libvirt
  mount --bind "$d/cache" /var/cache/libvirt
  hostname "msh-$name"
  mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu
  virtlogd -d
  libvirtd -d --listen
}

write_config() {
  local d=$1 ip=$2
  cat >"$d/etc/libvirtd.conf" <<CONF
# memscale test bed host
listen_tls = 0
listen_tcp = 1
listen_addr = "$ip"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
  cat >"$d/etc/qemu.conf" <<CONF
# memscale test bed host
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
# hosts share the machine's cgroups: do not let two hosts fight over machine/qemu-N-NAME
cgroup_controllers = [ ]
namespaces = [ ]
CONF
  cat >"$d/etc/virtlogd.conf" <<CONF
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
CONF
  # an empty client config so nothing of the machine's leaks in
  : >"$d/etc/libvirt.conf"
  mkdir -p "$d/etc/qemu/networks" "$d/etc/nwfilter" "$d/etc/hooks"
}

net_up() {
  local name=$1 ip=$2 ns=msh-$1 veth=msv-$1
  if ! ip link show "$TB_BRIDGE" >/dev/null 2>&1; then
    ip link add "$TB_BRIDGE" type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0 2>/dev/null ||
      ip link add "$TB_BRIDGE" type bridge
    sysctl -qw "net.ipv6.conf.$TB_BRIDGE.disable_ipv6=1" 2>/dev/null || true
    ip addr add "$TB_NET.1/24" dev "$TB_BRIDGE"
    ip link set "$TB_BRIDGE" up
  fi
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$veth" 2>/dev/null || true
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" 2>/dev/null || true
  ip link set "$veth" master "$TB_BRIDGE" up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
}

print_uris() {
  echo "unix=$(host_unix_uri "$1")"
  echo "tcp=$(host_tcp_uri "$1")"
}

up() {
  local name=$1 idx=$2 d ip h
  valid_host "$name"
  if ! [[ $idx =~ ^[0-9]+$ ]] || ((idx < 1 || idx > 200)); then die "INDEX must be 1..200"; fi
  d=$(host_dir "$name")
  if host_alive "$name"; then
    [[ $(host_index "$name") == "$idx" ]] || die "host $name is up with index $(host_index "$name"), not $idx"
    print_uris "$name"
    return 0
  fi
  for h in $(all_hosts); do
    if [[ $h != "$name" ]] && host_alive "$h" && [[ $(host_index "$h") == "$idx" ]]; then
      die "index $idx is taken by running host $h"
    fi
  done
  local sock
  sock=$(host_sock "$name")
  ((${#sock} < 108)) || die "socket path too long for a unix socket: $sock (shorten MEMSCALE_TESTBED_DIR)"
  down "$name" # leftovers of a crashed or half-downed host
  rm -rf "${d:?}"
  mkdir -p "$d"/{run,lib,etc,log,cache}
  echo "$idx" >"$d/index"
  ip=$TB_NET.$((10 + idx))
  write_config "$d" "$ip"
  # a copy of the QEMU capabilities another host already probed saves every start a probe
  if [[ -d $TB_STATE/qemu-caps ]]; then
    mkdir -p "$d/cache/qemu"
    cp -a "$TB_STATE/qemu-caps" "$d/cache/qemu/capabilities"
  fi
  net_up "$name" "$ip"
  ip netns exec "msh-$name" unshare --mount --uts --propagation private --fork \
    "$0" __inner "$d" "$name" </dev/null >"$d/start.log" 2>&1 9>&- ||
    {
      cat "$d/start.log" >&2
      die "cannot start host $name"
    }
  local i
  for ((i = 0; i < 150; i++)); do
    if virsh -q -c "$(host_unix_uri "$name")" version >/dev/null 2>&1; then
      if [[ ! -d $TB_STATE/qemu-caps && -d $d/cache/qemu/capabilities ]]; then
        if ! { cp -a "$d/cache/qemu/capabilities" "$TB_STATE/qemu-caps.$$" &&
          mv -T "$TB_STATE/qemu-caps.$$" "$TB_STATE/qemu-caps" 2>/dev/null; }; then
          rm -rf "$TB_STATE/qemu-caps.$$"
        fi
      fi
      print_uris "$name"
      return 0
    fi
    host_alive "$name" || break
    sleep 0.2
  done
  tail -20 "$d/log/libvirtd.log" "$d/start.log" >&2 2>/dev/null || true
  die "libvirtd of host $name does not answer"
}

# PIDs of everything that runs for a host: whatever lives in its netns, and the daemons and
# guests of its pid files as long as they are still in its mount namespace (a pid file of a
# host that is long gone may name an unrelated process by now).
host_pids() {
  local name=$1 d f p
  d=$(host_dir "$name")
  {
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "msh-$name"; then
      ip netns pids "msh-$name" 2>/dev/null || true
    fi
    for f in "$d"/run/libvirt/qemu/*.pid "$d/run/libvirtd.pid" "$d/run/virtlogd.pid"; do
      [[ -f $f ]] || continue
      p=$(cat "$f" 2>/dev/null || true)
      [[ $p =~ ^[0-9]+$ ]] && grep -qF "hosts/$name/run " "/proc/$p/mountinfo" 2>/dev/null && echo "$p"
    done
  } | while read -r p; do
    [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && echo "$p"
  done | sort -un
}

kill_wait() { # PIDs: TERM, wait up to 10 s, then KILL
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local i p any
  for ((i = 0; i < 100; i++)); do
    any=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && any=1; done
    ((any)) || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  sleep 0.2
}

down() {
  local name=$1 d pids=() lp
  valid_host "$name"
  d=$(host_dir "$name")
  # libvirtd first, so it does not react to its guests dying; then the rest
  if lp=$(host_pid "$name" libvirtd) && grep -qF "hosts/$name/run " "/proc/$lp/mountinfo" 2>/dev/null; then
    kill_wait "$lp"
  fi
  mapfile -t pids < <(host_pids "$name")
  kill_wait "${pids[@]}"
  ip netns del "msh-$name" 2>/dev/null || true
  ip link del "msv-$name" 2>/dev/null || true
  rm -f "$d"/run/*.pid 2>/dev/null || true
  bridge_gc
}

bridge_gc() { # the bridge goes with the last host
  ip link show "$TB_BRIDGE" >/dev/null 2>&1 || return 0
  [[ -z $(ip -o link show master "$TB_BRIDGE" 2>/dev/null) ]] && ip link del "$TB_BRIDGE"
  return 0
}

all_hosts() { # every host of this state dir (other state dirs' hosts are left alone)
  [[ -d $TB_HOSTS ]] || return 0
  find "$TB_HOSTS" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort
}

cmd=${1:-}
case $cmd in
  -h | --help | help | "")
    usage
    exit 0
    ;;
  __inner)
    inner "$2" "$3"
    exit 0
    ;;
esac
need_root
mkdir -p "$TB_HOSTS"
# Hosts share the bridge: one up/down at a time.
exec 9>"$TB_STATE/.lock"
case $cmd in up | down | down-all | restart-libvirtd) flock 9 ;; esac

case $cmd in
  up)
    (($# == 3)) || die "usage: host.sh up NAME INDEX"
    up "$2" "$3"
    ;;
  down)
    (($# == 2)) || die "usage: host.sh down NAME"
    down "$2"
    ;;
  down-all)
    for h in $(all_hosts); do down "$h"; done
    bridge_gc
    ;;
  uri)
    (($# >= 2)) || die "usage: host.sh uri NAME [unix|tcp]"
    valid_host "$2"
    case ${3:-unix} in
      unix) host_unix_uri "$2" ;;
      tcp) host_tcp_uri "$2" ;;
      *) die "usage: host.sh uri NAME [unix|tcp]" ;;
    esac
    ;;
  list)
    for h in $(all_hosts); do
      state=down
      host_alive "$h" && state=up
      echo "$h $(cat "$TB_HOSTS/$h/index" 2>/dev/null || echo -) $state"
    done
    ;;
  pid)
    (($# >= 2)) || die "usage: host.sh pid NAME [libvirtd|virtlogd]"
    host_pid "$2" "${3:-libvirtd}" || die "host $2 has no running ${3:-libvirtd}"
    ;;
  restart-libvirtd)
    (($# == 2)) || die "usage: host.sh restart-libvirtd NAME"
    lp=$(host_pid "$2" libvirtd) || die "host $2 is not up"
    vp=$(host_pid "$2" virtlogd) || die "host $2 has no virtlogd"
    kill_wait "$lp"
    nsenter -t "$vp" -m -u -n libvirtd -d --listen </dev/null >>"$(host_dir "$2")/start.log" 2>&1 9>&-
    for ((i = 0; i < 150; i++)); do
      vsh "$2" version >/dev/null 2>&1 && exit 0
      sleep 0.2
    done
    die "libvirtd of host $2 does not answer after restart"
    ;;
  exec)
    (($# >= 3)) || die "usage: host.sh exec NAME CMD..."
    lp=$(host_pid "$2" libvirtd) || die "host $2 is not up"
    name=$2
    shift 2
    exec 9>&-
    exec nsenter -t "$lp" -m -u -n "$@"
    ;;
  virsh)
    (($# >= 2)) || die "usage: host.sh virsh NAME ARGS..."
    name=$2
    shift 2
    exec 9>&-
    exec virsh -c "$(host_unix_uri "$name")" "$@"
    ;;
  *) die "unknown command $cmd (see --help)" ;;
esac
