#!/usr/bin/env bash
# Builds witan's cargo-fuzz targets (fuzz/, libFuzzer with AddressSanitizer)
# and runs each for a fixed time; see docs/robustness.md "Fuzzing".
#
#   scripts/fuzz.sh                 # every target for 120 s
#   scripts/fuzz.sh --secs 30       # shorter
#   scripts/fuzz.sh --target raft_rpc --secs 600
#   scripts/fuzz.sh --seeds         # regenerate fuzz/seeds/ from the targets
#   scripts/fuzz.sh --no-build      # run the targets as last built
#
# Prints one line per target and ends with `fuzz: T targets, F findings`;
# exits non-zero on a finding, printing the path of the input that caused
# it (replay it with `cargo +nightly fuzz run TARGET PATH`).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(grpc_request gateway_json raft_rpc snapshot_restore)
secs=120
seeds_only=0
build=1
only=""
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --secs)
            [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --secs needs a number of seconds" >&2; exit 2; }
            secs=$2
            shift 2
            ;;
        --target)
            only=${2:?fuzz.sh: --target needs a name}
            shift 2
            ;;
        --seeds) seeds_only=1; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -n "$only" ]; then
    [[ " ${TARGETS[*]} " == *" $only "* ]] || { echo "fuzz.sh: no target $only (${TARGETS[*]})" >&2; exit 2; }
    TARGETS=("$only")
fi

export CARGO_INCREMENTAL=0
# cargo-fuzz needs nightly flags (-Zsanitizer). Use a nightly toolchain when
# rustup has one; otherwise let the stable compiler accept them, which is
# what RUSTC_BOOTSTRAP is for (the sanitizer runtimes ship with stable too).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    echo "fuzz.sh: no nightly toolchain; building with stable and RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked >&2
fi

started=$(date +%s)
if ((build)); then
    if ! "${cargo[@]}" fuzz build -O --debug-assertions >fuzz/build.log 2>&1; then
        tail -n 40 fuzz/build.log >&2
        echo "fuzz: ${#TARGETS[@]} targets, build failed (fuzz/build.log)"
        exit 1
    fi
    echo "fuzz build: $(($(date +%s) - started)) s"
fi
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release

if ((seeds_only)); then
    # Each target writes its seeds from its init hook and exits.
    for t in "${TARGETS[@]}"; do
        rm -rf "fuzz/seeds/$t"
        WITAN_FUZZ_WRITE_SEEDS="fuzz/seeds/$t" "$bin_dir/$t" >/dev/null 2>&1
        echo "fuzz seeds $t: $(find "fuzz/seeds/$t" -type f | wc -l) files"
    done
    exit 0
fi

findings=0
for t in "${TARGETS[@]}"; do
    # The working corpus grows across runs on one machine (it is ignored by
    # git); the committed seeds are read alongside it.
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/seeds/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t.log"
    # -rss_limit_mb/-malloc_limit_mb: no input may make a target allocate
    # without bound; -timeout: none may take 10 s.
    if "$bin_dir/$t" "$corpus" "fuzz/seeds/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        size=$(find "$corpus" -type f | wc -l)
        echo "fuzz $t: ok, ${runs:-?} runs in $secs s (${rate:-?} exec/s), corpus $size"
    else
        findings=$((findings + 1))
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        grep -m 1 -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|ERROR: LeakSanitizer' "$log" >&2 || tail -n 20 "$log" >&2
        echo "fuzz $t: FINDING ${crash:-(no input written)} (log $log)"
    fi
done
echo "fuzz: ${#TARGETS[@]} targets, $findings findings"
((findings == 0))
