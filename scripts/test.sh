#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs
# every check CI runs: formatting, clippy, unit, in-process cluster and
# real-process (etcdctl) tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcdctl (Debian's etcd-client) drives the real-process suites; protoc is
# needed by the etcd-client crate the client-library tests use.
need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build -p witan-node --bin witan --locked
export WITAN_BIN="$PWD/target/debug/witan"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
