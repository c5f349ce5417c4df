#!/usr/bin/env bash
# Issue 18's bar against what the planner's rules can reach at all: replays a grid of policies
# (the shipped default with its peak window, headroom and headroom share varied: 6 x 6 x 2 =
# 72), the shipped default and every policy of policies/candidates/ (the recurring-demand,
# decaying-cushion and first-day-headroom rules) beside VPA and Autopilot at floor 0% and
# 128 MiB/s, with per-VM figures; then prints each policy against the bar and the hindsight
# bound of scripts/sim-frontier.py (each VM given the best of those policies for it, knowing
# its month).
#   scripts/sim-frontier.sh [--trace FILE] [--out DIR] [--bin MEMSCALE] [--small]
# Default trace: the July sample (a few minutes); a full month takes hours on two cores.
# --small varies only the 6 h and 24 h windows (24 policies of the grid).
set -euo pipefail
cd "$(dirname "$0")/.."
trace=../shared/traces/bitbrains-rnd-2013-07-sample20.csv.gz
out=target/sim-frontier
bin=""
small=0
while (($#)); do
  case $1 in
    --trace) trace=$2; shift ;;
    --out) out=$2; shift ;;
    --bin) bin=$2; shift ;;
    --small) small=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sim-frontier: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -r $trace ]] || { echo "sim-frontier: $trace is missing (see ../shared/traces/README.md)" >&2; exit 2; }
if [[ -z $bin ]]; then
  cargo build --release --quiet --bin memscale
  bin=${CARGO_TARGET_DIR:-target}/release/memscale
fi
mkdir -p "$out"
windows=(3h 6h 12h 24h 48h 168h)
headrooms=(64 128 256 512 1024 2048)
if ((small)); then windows=(6h 24h); fi
grid=$out/grid.toml
: >"$grid"
for w in "${windows[@]}"; do
  for h in "${headrooms[@]}"; do
    for p in 10 50; do
      # The shipped default's knobs, but for the three varied (and min_free, which may not
      # exceed the headroom).
      sed -e '/^\s*#/d' -e '/^\s*$/d' \
        -e "s/^name = .*/name = \"pw$w-h$h-p$p\"/" \
        -e "s/^peak_window = .*/peak_window = \"$w\"/" \
        -e "s/^headroom = .*/headroom = \"${h}MiB\"/" \
        -e "s/^headroom_pct = .*/headroom_pct = \"$p%\"/" \
        -e "s/^min_free = .*/min_free = \"$((h < 96 ? h : 96))MiB\"/" \
        policies/default.toml >>"$grid"
    done
  done
done
n=$(($(grep -c '^\[\[policy\]\]' "$grid") + 1 + $(ls policies/candidates/*.toml | wc -l)))
echo "sim-frontier: $n policies ($grid, the default, policies/candidates/); replaying $trace" >&2
json=$out/$(basename "$trace" .csv.gz).json
"$bin" simulate --trace "$trace" --floor 0% --grow-speed 128MiB/s --policy "$grid" \
  --policy policies/default.toml --policy policies/candidates \
  --baseline vpa --baseline autopilot --baseline oracle --json --per-vm --no-progress >"$json"
scripts/sim-frontier.py "$json" | tee "$out/$(basename "$trace" .csv.gz).md"
