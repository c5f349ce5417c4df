#!/usr/bin/env bash
# Private libvirt "hosts" on this machine: each its own network namespace (10.77.0.10+INDEX on
# bridge msbr0) and mount namespace with private /run, /var/lib/libvirt, /etc/libvirt,
# /var/log/libvirt, running its own virtlogd and libvirtd. Tears down only what it started.
#   host.sh up NAME INDEX     start (idempotent); prints unix=URI and tcp=URI
#   host.sh down NAME         stop its guests and daemons, remove its namespace
#   host.sh down-all          every host this test bed started
#   host.sh uri NAME [unix|tcp]
#   host.sh list
#   host.sh pid NAME          libvirtd's PID
#   host.sh kill-libvirtd NAME   SIGKILL the host's libvirtd (its guests keep running)
#   host.sh start-libvirtd NAME  start it again in the host's namespaces
set -euo pipefail
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

alive() { local p; p=$(cat "$HOSTS/$1/run/libvirtd.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

up() {
  local name=$1 idx=$2 d ip
  [[ $name =~ ^[a-z0-9]{1,8}$ ]] || die "host name must be 1-8 lowercase letters or digits"
  [[ $idx =~ ^[0-9]+$ && $idx -ge 1 && $idx -le 200 ]] || die "index must be 1..200"
  d=$HOSTS/$name
  if alive "$name"; then print_uris "$name"; return; fi
  # log/qemu: guests migrated in write their console logs there before libvirt makes it.
  mkdir -p "$d"/{run,lib,etc,log/qemu,cache}
  echo "$idx" > "$d/index"
  # libvirtd probes every QEMU binary at start (about 8 s of TCG, per host); hosts share the
  # probe's results. libvirt checks each file against the binaries' ctimes, the kernel and the
  # CPU, and probes again when it no longer holds.
  if [[ -d $CAPS ]]; then mkdir -p "$d/cache/qemu/capabilities" && cp -a "$CAPS/." "$d/cache/qemu/capabilities/"; fi
  ip=$NET.$((10 + idx))
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  if ! ip netns list | grep -qw "msh-$name"; then
    ip netns add "msh-$name"
    ip link add "msv-$name" type veth peer name eth0 netns "msh-$name"
    ip link set "msv-$name" master "$BRIDGE" up
    ip -n "msh-$name" addr add "$ip/24" dev eth0
    ip -n "msh-$name" link set eth0 up
    ip -n "msh-$name" link set lo up
  fi
  if [[ ! -f $d/etc/.memscale ]]; then
    cp -a /etc/libvirt/. "$d/etc/"
    uuid=$(cat /proc/sys/kernel/random/uuid)
    cat > "$d/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "$ip"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_rw_perms = "0770"
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
    cat > "$d/etc/qemu.conf" <<CONF
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
CONF
    touch "$d/etc/.memscale"
  fi
  ip netns exec "msh-$name" unshare --mount --uts --propagation private --fork bash -c "
    set -e
    mount --bind '$d/run' /run
    mount --bind '$d/lib' /var/lib/libvirt
    mount --bind '$d/etc' /etc/libvirt
    mount --bind '$d/log' /var/log/libvirt
    mount --bind '$d/cache' /var/cache/libvirt
    hostname 'msh-$name'
    virtlogd -d
    libvirtd -d --listen
  " 9>&- >"$d/start.log" 2>&1 || { cat "$d/start.log" >&2; die "cannot start host $name"; }
  for _ in $(seq 1 100); do
    if virsh -q -c "$(host_uri "$name")" version >/dev/null 2>&1; then print_uris "$name"; return; fi
    sleep 0.2
  done
  die "libvirtd of host $name does not answer"
}

print_uris() {
  echo "unix=$(host_uri "$1")"
  echo "tcp=qemu+tcp://$(host_ip "$1")/system"
}

kill_wait() {
  local pids=("$@") p
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 50); do
    local any=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
    ((any)) || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

# Keep a host's QEMU capabilities for the next host (see `up`): files the shared cache lacks,
# or newer ones (a binary upgraded since); each written whole, under the lock.
save_caps() {
  local f base
  for f in "$1"/cache/qemu/capabilities/*.xml; do
    [[ -f $f ]] || continue
    base=$(basename "$f")
    [[ -f $CAPS/$base && ! $f -nt $CAPS/$base ]] && continue
    mkdir -p "$CAPS"
    cp -a "$f" "$CAPS/.$base.tmp" && mv -f "$CAPS/.$base.tmp" "$CAPS/$base"
  done
}

down() {
  local name=$1 d=$HOSTS/$1 pids=() f
  [[ -d $d ]] || return 0
  save_caps "$d"
  for f in "$d"/run/libvirt/qemu/*.pid; do
    [[ -f $f ]] && pids+=("$(cat "$f")")
  done
  kill_wait "${pids[@]}"
  pids=()
  for f in "$d/run/libvirtd.pid" "$d/run/virtlogd.pid"; do
    [[ -f $f ]] && pids+=("$(cat "$f")")
  done
  kill_wait "${pids[@]}"
  ip netns del "msh-$name" 2>/dev/null || true
  ip link del "msv-$name" 2>/dev/null || true
  rm -rf "$d"
  # The bridge goes with its last port, not with this state directory's last host: hosts of
  # another test bed directory (MEMSCALE_TESTBED_DIR) may still be on it.
  if ip link show "$BRIDGE" >/dev/null 2>&1 && ! ls "/sys/class/net/$BRIDGE/brif" 2>/dev/null | grep -q .; then
    ip link del "$BRIDGE"
  fi
}

# Hosts share the bridge: one change at a time.
mkdir -p "$STATE"
exec 9>"$STATE/.lock"
case ${1:-} in up|down|down-all) flock 9 ;; esac

case ${1:-} in
  up) [[ $# -eq 3 ]] || die "usage: host.sh up NAME INDEX"; up "$2" "$3" ;;
  down) [[ $# -eq 2 ]] || die "usage: host.sh down NAME"; down "$2" ;;
  down-all) for h in $(ls "$HOSTS" 2>/dev/null); do down "$h"; done ;;
  uri) [[ ${3:-unix} == tcp ]] && echo "qemu+tcp://$(host_ip "$2")/system" || host_uri "$2" ;;
  list) for h in $(ls "$HOSTS" 2>/dev/null); do alive "$h" && echo "$h up" || echo "$h down"; done ;;
  pid) cat "$HOSTS/$2/run/libvirtd.pid" ;;
  kill-libvirtd) kill -KILL "$(cat "$HOSTS/$2/run/libvirtd.pid")" ;;
  start-libvirtd)
    # Into the namespaces the host's virtlogd lives in; running guests are picked up again.
    lp=$(cat "$HOSTS/$2/run/virtlogd.pid")
    nsenter -t "$lp" -m -u -n -- libvirtd -d --listen
    for _ in $(seq 1 100); do
      virsh -q -c "$(host_uri "$2")" version >/dev/null 2>&1 && exit 0
      sleep 0.2
    done
    die "libvirtd of host $2 does not answer after a restart" ;;
  -h|--help|"") usage ;;
  *) die "unknown command $1 (see --help)" ;;
esac
