#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian packages, a guest
# kernel), then checks formatting and lints, runs unit and property tests, and the end-to-end
# tests against real QEMU guests under private libvirtds.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "test: run as root (the end-to-end tests start libvirtd and QEMU)" >&2; exit 2; }
echo "== test bed: packages and guest kernel"
export MEMSCALE_TESTBED_ROOTFS_ASYNC=1
tests/testbed/install.sh
# The Debian rootfs of tests/deb_systemd.rs (debootstrap, about 4 minutes on a fresh machine)
# builds while the code compiles; the test waits for it (rootfs.sh holds a lock).
rootfs_log=$(mktemp)
tests/testbed/rootfs.sh >"$rootfs_log" 2>&1 &
# Keystone, Placement and nova-api for e2e_openstack: their packages (about 6 minutes on a fresh
# machine) and first bring-up (about 3.5) also happen while the code builds and the other
# tests run (the test's own `up` waits for it; a failure shows there).
tests/testbed/openstack.sh up >/dev/null 2>&1 &
trap 'tests/testbed/host.sh down-all || true; tests/testbed/openstack.sh down || true' EXIT
if ! rustup component list --installed 2>/dev/null | grep -q clippy; then rustup component add clippy rustfmt; fi
echo "== format and lints"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
echo "== build the tests"
# One cargo run builds the unit-test binaries and every test file's, side by side on both
# cores; the unit and property tests then run as one more file among the others.
mapfile -t bins < <(cargo test --lib --bins --tests --no-run --message-format=json |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    kind = m["target"]["kind"]
    if kind == ["test"]:
        print(m["target"]["name"], m["executable"])
    elif kind in (["lib"], ["bin"]):
        print("unit-" + kind[0] + "-" + m["target"]["name"], m["executable"])' | sort -u)
((${#bins[@]})) || { echo "test: no test binary was built" >&2; exit 1; }
logs=$(mktemp -d)
# Four files at a time, at most two of them heavy (scripts/run-tests.py): each end-to-end file
# has its own private hosts, and most of a test's time is spent waiting on guests (three at a
# time left the two cores half idle, measured); but four heavy files together starved the
# guests of CPU.
echo "== unit, property, integration and end-to-end tests (real guests), four files at a time"
printf '%s\n' "${bins[@]}" | python3 scripts/run-tests.py "$logs"
failed=0
for f in "$logs"/*.failed; do
  [[ -e $f ]] || continue
  failed=1
  name=$(basename "$f" .failed)
  echo "== $name failed; its output:"
  cat "$logs/$name.log"
done
((failed == 0)) || exit 1
grep -h "^test result" "$logs"/*.log | awk '{p += $4; f += $6} END {print "== all test files passed: " p " tests"}'
