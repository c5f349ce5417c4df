#!/usr/bin/env bash
# Soak (not in CI): several real guests with random demand under the daemon for a long time.
# Counts guest OOMs, envelope violations (every resize in the audit, and every guest's size as
# libvirt reports it, against its floor and ceiling) and samples the daemon's memory.
#
#   scripts/soak.sh [MINUTES (default 30)] [GUESTS (default 4)]
#
# Prints a summary and writes it as JSON to target/soak/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "soak: run as root" >&2; exit 2; }
minutes=${1:-30}
n=${2:-4}
TB=tests/testbed
"$TB/install.sh" >/dev/null
cargo build --release --quiet
out=target/soak
rm -rf "$out"; mkdir -p "$out"
host=lsoak
"$TB/host.sh" down "$host" >/dev/null 2>&1 || true
eval "$("$TB/host.sh" up "$host" 50 | sed 's/^/h_/')"
cleanup() {
  [[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null || true
  "$TB/host.sh" down "$host" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for i in $(seq 1 "$n"); do
  "$TB/guest.sh" define "$host" "s$i" --mem 512 --vmem 1536 --stats-period 2 --start >/dev/null
done
for i in $(seq 1 "$n"); do "$TB/guest.sh" wait-boot "$host" "s$i" >/dev/null; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/memscale --log-format plain run --connect "$host=$h_unix" --policies policies \
  --listen "127.0.0.1:$port" --audit-log "$out/audit.jsonl" --state-dir "$out/state" \
  2> "$out/memscale.log" &
pid=$!
echo "soak: $n guests, $minutes min, daemon pid $pid, API 127.0.0.1:$port"
end=$((SECONDS + minutes * 60))
next_sample=0
declare -A next_change
RANDOM=42
: > "$out/rss.tsv"
: > "$out/sizes.tsv"
while ((SECONDS < end)); do
  kill -0 "$pid" 2>/dev/null || { echo "soak: the daemon died" >&2; exit 1; }
  for i in $(seq 1 "$n"); do
    if ((SECONDS >= ${next_change[$i]:-0})); then
      # Demand between 50 and 1450 MiB, reached at 10 to 200 MiB/s; held 20 to 140 s.
      mib=$((50 + RANDOM % 1400)); rate=$((10 + RANDOM % 190))
      "$TB/guest.sh" demand "$host" "s$i" "$mib" "$rate" >/dev/null 2>&1 || true
      next_change[$i]=$((SECONDS + 20 + RANDOM % 120))
    fi
  done
  if ((SECONDS >= next_sample)); then
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    echo -e "$SECONDS\t$rss" >> "$out/rss.tsv"
    for i in $(seq 1 "$n"); do
      cur=$(virsh -q -c "$h_unix" domstats --balloon "s$i" | awk -F= '/balloon.current=/ {print $2}')
      echo -e "$SECONDS\ts$i\t$cur" >> "$out/sizes.tsv"
    done
    next_sample=$((SECONDS + 30))
  fi
  sleep 2
done
ooms=0
for i in $(seq 1 "$n"); do
  if "$TB/guest.sh" oom "$host" "s$i" >/dev/null 2>&1; then ooms=$((ooms + 1)); echo "soak: s$i OOM: $("$TB/guest.sh" oom "$host" "s$i")"; fi
done
curl -s "http://127.0.0.1:$port/v1/guests" > "$out/guests.json" || true
python3 - "$out" "$ooms" "$minutes" "$n" <<'EOF'
import json, sys
out, ooms, minutes, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
recs = [json.loads(l) for l in open(f"{out}/audit.jsonl")]
resizes = [r for r in recs if r["kind"] != "hold" and r["result"] == "applied"]
bad = [r for r in resizes if r["ceiling"] and not (r["floor"] <= r["after"] <= r["ceiling"])]
guests = {g["name"]: g for g in json.load(open(f"{out}/guests.json"))}
over = 0
for line in open(f"{out}/sizes.tsv"):
    t, g, cur = line.split("\t")
    env = (guests.get(g) or {}).get("envelope") or {}
    if cur.strip() and env and not (env["floor"] - 4 * 2**20 <= int(cur) * 1024 <= env["ceiling"]):
        over += 1
rss = [int(l.split("\t")[1]) for l in open(f"{out}/rss.tsv") if l.strip()]
half = len(rss) // 2
s = {
    "minutes": minutes, "guests": n, "decisions": len(recs), "resizes": len(resizes),
    "failed_resizes": sum(1 for r in recs if r["result"].startswith("failed")),
    "guest_ooms": ooms, "envelope_violations_audit": len(bad), "envelope_violations_sampled": over,
    "daemon_rss_kib_first": rss[0] if rss else None, "daemon_rss_kib_last": rss[-1] if rss else None,
    "daemon_rss_kib_max": max(rss) if rss else None,
    "daemon_rss_kib_mean_first_half": sum(rss[:half]) // max(half, 1),
    "daemon_rss_kib_mean_second_half": sum(rss[half:]) // max(len(rss) - half, 1),
}
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(s, indent=1))
EOF
