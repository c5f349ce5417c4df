#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian packages, a guest
# kernel), then checks formatting and lints, runs unit and property tests, and the end-to-end
# tests against real QEMU guests under private libvirtds.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "test: run as root (the end-to-end tests start libvirtd and QEMU)" >&2; exit 2; }
echo "== test bed: packages and guest kernel"
tests/testbed/install.sh
trap 'tests/testbed/host.sh down-all || true' EXIT
if ! rustup component list --installed 2>/dev/null | grep -q clippy; then rustup component add clippy rustfmt; fi
echo "== format and lints"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
echo "== unit and property tests"
cargo test --lib --bins
echo "== end-to-end tests (real guests)"
cargo test --test "*" -- --test-threads 2
