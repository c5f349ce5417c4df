#!/usr/bin/env bash
# The demo: boots throwaway guests on a private libvirtd, runs memscale on them and shows it
# sizing them live. Everything it starts is removed on exit (Ctrl-C, or after --duration).
#   scripts/demo.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=0
while (($#)); do
  case $1 in
    --duration) duration=$2; shift ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (it starts libvirtd and QEMU)" >&2; exit 2; }
TB=tests/testbed
echo "== installing what the demo needs (fast when already there)"
"$TB/install.sh" >/dev/null
echo "== building memscale"
cargo build --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/memscale
work=$(mktemp -d)
pid=""
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  "$TB/host.sh" down demo || true
  rm -rf "$work"
  echo "== demo cleaned up"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
"$TB/host.sh" up demo 50 >/dev/null
uri=$("$TB/host.sh" uri demo)
# web: plain libvirt, 512 MiB boot + 2 GiB virtio-mem; demand climbs, falls, climbs again
"$TB/guest.sh" define demo web --mem 512 --vmem 2048 --stats-period 1 \
  --demand "15:1100@30,75:80,120:1500@40,190:150" --start >/dev/null
# db: OpenStack-style, flavor 768 MiB with hw:mem_max_mb 1536 (Nova metadata)
"$TB/guest.sh" define demo db --mem 768 --vmem 1024 --stats-period 1 --nova m1.db:768:1536 \
  --demand "0:300,40:1300@25,150:300" --start >/dev/null
# idle: booted with 1 GiB, defined at 512 MiB: memscale balloons it down to its floor
"$TB/guest.sh" define demo idle --mem 1024 --current 512 --vmem 1024 --stats-period 1 --start >/dev/null
mkdir -p "$work/policies"
cp policies/default.toml "$work/policies/"
cat > "$work/policies/demo.toml" <<'TOML'
# Faster reactions than the default, so the demo shows them within minutes.
[[policy]]
name = "demo"
priority = 10
[policy.match]
names = ["web", "db", "idle"]
[policy.memory]
headroom = "192MiB"
shrink_cooldown = "15s"
window = "20s"
shrink_rate = "128MiB/s"
TOML
port=19850
"$bin" --log-format plain run --connect "demo=$uri" --policies "$work/policies" \
  --listen "127.0.0.1:$port" --audit-log "$work/audit.jsonl" --state-dir "$work/state" 2> "$work/memscale.log" &
pid=$!
echo "== memscale running (pid $pid); API on 127.0.0.1:$port; Ctrl-C to stop"
start=$(date +%s)
while :; do
  sleep 2
  kill -0 "$pid" 2>/dev/null || { echo "memscale exited:"; tail -20 "$work/memscale.log"; exit 1; }
  [[ -t 1 ]] && clear
  echo "memscale demo — $(($(date +%s) - start))s   (guest demand is tmpfs the guest cannot give back)"
  echo
  "$bin" status --api "127.0.0.1:$port" || true
  echo
  printf '%-6s %s\n' GUEST "IN-GUEST VIEW"
  for g in web db idle; do
    printf '%-6s %s\n' "$g" "$("$TB/guest.sh" stat demo "$g" | awk '{print $3, $5, $6}')"
  done
  echo
  echo "recent decisions:"
  { grep -E ' (grow|shrink) ' "$work/memscale.log" || true; } | tail -6 | sed 's/^ *INFO memscale::daemon::host: /  /' | cut -c1-160
  if ((duration > 0 && $(date +%s) - start >= duration)); then break; fi
done
