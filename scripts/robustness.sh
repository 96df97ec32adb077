#!/usr/bin/env bash
# The robustness suite (docs/robustness.md): single-fault runs of real witan
# processes under recorded traffic, checked for linearizability, watch
# guarantees and lost acknowledged writes.
#
#   scripts/robustness.sh [--runs N] [--seed S] [--fault KIND] [--jobs N]
#   scripts/robustness.sh --planted NAME   # ack-before-fsync | stale-follower-read | watch-skip-event
#   scripts/robustness.sh --long           # leader kill -9 every 5-15 s for 10 min, then 500 runs
#
# --jobs N makes N runs at once, each on its own cluster, ports and dirs
# (the long mode's 500 runs take ~2.5 h one at a time).
#
# Ends with `runs=N violations=V lost_acked_writes=L seed=S`; exits non-zero
# on any violation. With --planted it builds witan with that planted bug,
# runs until the suite reports it (bounded), and exits non-zero when it did
# (the expected outcome), zero when the bug went unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

runs=""
planted=""
args=()
while (($#)); do
    case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seed | --fault | --jobs) args+=("$1" "$2"); shift 2 ;;
    --planted) planted="$2"; shift 2 ;;
    --long) args+=("$1"); shift ;;
    --long-secs) args+=("$1" "$2"); shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done

cargo build -q -p witan-robustness --bin witan-robustness --locked
if [ -z "$planted" ]; then
    cargo build -q -p witan-node --bin witan --locked
    export WITAN_BIN="$PWD/target/debug/witan"
    # Without --runs the binary decides: 30, or 500 after --long's loop.
    exec target/debug/witan-robustness ${runs:+--runs "$runs"} "${args[@]}"
fi

# Which fault exposes which planted bug, and which violation proves it.
case "$planted" in
ack-before-fsync) fault=kill-single; proof='\[(LostWrite|Revision)\]' ;;
stale-follower-read) fault=pause-follower; proof='\[(Linearizability|Revision)\]' ;;
watch-skip-event) fault=pause-follower; proof='\[Watch\]' ;;
*) echo "unknown planted bug $planted" >&2; exit 2 ;;
esac
# Built with the feature into the shared target dir, then kept aside; the
# normal binary is rebuilt afterwards (cargo keeps both builds' artifacts).
mkdir -p target/planted
cargo build -q -p witan-node --bin witan --locked --features "$planted"
cp target/debug/witan "target/planted/witan-$planted"
cargo build -q -p witan-node --bin witan --locked
export WITAN_BIN="$PWD/target/planted/witan-$planted"
runs="${runs:-5}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
target/debug/witan-robustness --runs "$runs" --fault "$fault" --stop-at-first-violation \
    "${args[@]}" | tee "$out" || status=$?
if grep -Eq "^  $proof" "$out"; then
    echo "planted bug $planted: caught"
else
    echo "planted bug $planted: NOT caught" >&2
    exit 0
fi
exit "$status"
