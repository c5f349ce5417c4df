#!/usr/bin/env bash
# Fuzz (not in CI): the policy parser, the trace reader and the API (raw bytes through the real
# HTTP server and handler), with AFL++ through cargo-afl on the stable toolchain (cargo-fuzz
# needs nightly, which this machine cannot fetch).
#
#   scripts/fuzz.sh [SECONDS per target (default 600)] [TARGET...]
#
# Findings land in fuzz/out/TARGET/default/crashes; a summary line per target is printed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}; shift || true
targets=("${@:-policy trace api}")
read -r -a targets <<< "${targets[*]}"
command -v cargo-afl >/dev/null || cargo install cargo-afl
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --quiet
mkdir -p in/policy in/trace in/api
cp ../policies/*.toml in/policy/ 2>/dev/null || true
cp ../tests/policy-corpus/*.toml in/policy/ 2>/dev/null || true
printf 'Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\tDisk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]\n1376314846;\t4;\t11703.99;\t10.4;\t0.09;\t67108864;\t6129274.66;\t0;\t2.33;\t0.2;\t0.06\n1376315146;\t4;\t11703.99;\t10.4;\t0.09;\t67108864;\t6129274.66;\t0;\t2.33;\t0.2;\t0.06\n' > in/trace/seed.csv
printf 'GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n' > in/api/get
printf 'POST /v1/guests/g/adjust HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-token\r\nContent-Length: 19\r\n\r\n{"memory_mib": 512}' > in/api/adjust
printf 'POST /v1/proposals/1/approve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 0\r\n\r\n' > in/api/approve
for t in "${targets[@]}"; do
  rm -rf "out/$t"; mkdir -p out
  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 timeout --signal=INT "$((secs + 30))" \
    cargo afl fuzz -V "$secs" -i "in/$t" -o "out/$t" "target/release/$t" >"out-$t.log" 2>&1 || true
  st=out/$t/default/fuzzer_stats
  if [[ -f $st ]]; then
    awk -v t="$t" -F' *: *' '/^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|run_time|bitmap_cvg)/ {a[$1]=$2} END {printf "%s: %s s, %s execs (%s/s), corpus %s, coverage %s, crashes %s, hangs %s\n", t, a["run_time"], a["execs_done"], a["execs_per_sec"], a["corpus_count"], a["bitmap_cvg"], a["saved_crashes"], a["saved_hangs"]}' "$st"
  else
    echo "$t: no stats (see fuzz/out-$t.log)"; tail -5 "out-$t.log"
  fi
done
