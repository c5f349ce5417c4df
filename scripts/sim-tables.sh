#!/usr/bin/env bash
# The replay's headline tables, regenerated: July and August 2013 of the Bitbrains trace, every
# controller at floor 0% (the trace has no flavors) and 25% (a flavor floor) at the resize
# speeds measured on real guests (the simulator's defaults), the grow-speed sensitivity
# (128 MiB/s, 512 MiB/s, 1 GiB/s at floor 0%) and Autopilot's unpublished constants.
#   scripts/sim-tables.sh [--out DIR] [--bin MEMSCALE] [--quick] [--month 07|08]...
#                         [--policy FILE]... [--render-only]
# --quick replays the 20-VM July sample only (seconds, for iterating); --month limits the
# months (two invocations can run side by side into one DIR); --policy adds a policy file to
# every run beside the shipped default; --render-only writes the tables from the JSON already
# in DIR. Each run's JSON and the tables (tables.md) land in DIR (default:
# target/sim-tables). A full run is ten runs of one to a few minutes each.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/sim-tables
bin=""
quick=0
render=0
policies=()
months=()
while (($#)); do
  case $1 in
    --out) out=$2; shift ;;
    --bin) bin=$2; shift ;;
    --quick) quick=1 ;;
    --month) months+=("$2"); shift ;;
    --render-only) render=1 ;;
    --policy) policies+=(--policy "$2"); shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sim-tables: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
traces=../shared/traces
if [[ -z $bin ]] && ((!render)); then
  cargo build --release --quiet --bin memscale
  bin=${CARGO_TARGET_DIR:-target}/release/memscale
fi
((render)) || [[ -x $bin ]] || { echo "sim-tables: $bin is not an executable" >&2; exit 2; }
if ((quick)); then
  months=(07-sample20)
elif ((!${#months[@]})); then
  months=(07 08)
fi
for m in "${months[@]}"; do
  [[ -r $traces/bitbrains-rnd-2013-$m.csv.gz ]] || {
    echo "sim-tables: $traces/bitbrains-rnd-2013-$m.csv.gz is missing (see $traces/README.md)" >&2
    exit 2
  }
done
mkdir -p "$out"
# When a policy file is given the shipped default is named beside it, so both run.
if ((${#policies[@]})); then
  policies=(--policy policies/default.toml "${policies[@]}")
fi
autopilots=(
  autopilot
  autopilot:window=12h autopilot:window=48h
  autopilot:margin=5% autopilot:margin=20%
  autopilot:oom=10% autopilot:oom=40%
)
run() { # NAME MONTH ARGS...
  local name=$1 m=$2
  shift 2
  echo "== $m $name: memscale simulate $*" >&2
  "$bin" simulate --trace "$traces/bitbrains-rnd-2013-$m.csv.gz" --json --no-progress \
    "${policies[@]}" "$@" >"$out/$m-$name.json"
}
for m in "${months[@]}"; do
  ((render)) && break
  run floor0 "$m" --floor 0%
  run floor25 "$m" --floor 25%
  run grow512 "$m" --floor 0% --grow-speed 512MiB/s
  run grow1g "$m" --floor 0% --grow-speed 1GiB/s
  ap=()
  for a in "${autopilots[@]}"; do ap+=(--baseline "$a"); done
  run autopilot "$m" --floor 0% --baseline none "${ap[@]}"
done
python3 - "$out" "${months[@]}" >"$out/tables.md" <<'EOF'
import json, sys
out, months = sys.argv[1], sys.argv[2:]
def load(m, name):
    try:
        return json.load(open(f"{out}/{m}-{name}.json"))
    except (OSError, ValueError):
        print(f"*{m}-{name}: not run (or not finished).*\n")
        return None
def label(m):
    return {"07": "July 2013", "08": "August 2013"}.get(m, m)
def row(r, name=None):
    o = r["oracle_pct"]
    return (f"| {name or r['name']} | {r['reclaimed_pct']:.2f} | "
            f"{'-' if o is None else f'{o:.1f}'} | {r['pressure_time_pct']:.4f} | "
            f"{r['pressure_events_per_vm_day']:.3f} | {r['shortfall_gib_h']:.1f} | "
            f"{r['pressure_event_p99_s']:.0f} | {r['resizes_per_vm_day']:.1f} |")
head = ("| controller | reclaimed % | % of oracle | pressure time % | events / VM-day "
        "| shortfall GiB·h | p99 event s | resizes / VM-day |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
def model(j):
    md = j["model"]
    return (f"grow {md['grow_speed'] / 2**20:.0f} MiB/s, shrink {md['shrink_speed'] / 2**20:.0f} MiB/s, "
            f"delay {md['delay']:g} s, interval {md['interval']:g} s")
for m in months:
    for name, floor in (("floor0", "0%"), ("floor25", "25%")):
        print(f"### {label(m)}, floor {floor}\n")
        j = load(m, name)
        if j is None:
            continue
        print(f"{j['trace']['vms']} VMs, {j['results'][0]['vm_days']:.0f} VM-days; {model(j)}.\n")
        print(head)
        for r in j["results"]:
            print(row(r))
        print()
    print(f"### {label(m)}, floor 0%: grow speed\n")
    print("| controller | grow speed | reclaimed % | % of oracle | pressure time % | events / VM-day "
          "| shortfall GiB·h | p99 event s | resizes / VM-day |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [(n, j) for n in ("floor0", "grow512", "grow1g") if (j := load(m, n)) is not None]
    for r0 in (runs[0][1]["results"] if runs else []):
        # MoM and Proxmox act only on host pressure: nothing to show outside host mode.
        if r0["name"] in ("static", "mom", "proxmox"):
            continue
        for n, j in runs:
            r = next(x for x in j["results"] if x["name"] == r0["name"])
            speed = f"{j['model']['grow_speed'] / 2**20:.0f} MiB/s"
            cells = row(r).split(" | ")
            print(" | ".join([cells[0], speed] + cells[1:]))
    print()
    print(f"### {label(m)}, floor 0%: Autopilot's unpublished constants\n")
    j = load(m, "autopilot")
    if j is None:
        continue
    print("Defaults: window=24h, margin=10%, oom=20%; each row changes one.\n")
    print(head)
    for r in j["results"]:
        if r["name"].startswith("autopilot"):
            print(row(r))
    print()
EOF
echo "sim-tables: $out/tables.md" >&2
