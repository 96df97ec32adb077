#!/usr/bin/env bash
# Benchmarks witan against etcd on this machine, side by side (issue 6).
#
#   scripts/bench.sh            every scenario, 3 rounds (about 35 minutes on 2 cores)
#   scripts/bench.sh --quick    put_1, put_64, range_lin_64, one round (about 3 minutes
#                               once the tools are built)
#
# Both systems run as fresh 3-member clusters on loopback with the same flags
# and are driven by etcd's own benchmark tool (go.etcd.io/etcd/v3/tools/benchmark).
# Within each round witan and etcd alternate (odd rounds witan first, even
# rounds etcd first) so slow drift of the machine's load hits both alike.
# Prints medians and the witan/etcd ratio per scenario; the last line of the
# output is a JSON summary. docs/benchmarks.md describes every scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [--quick] [--rounds N] [--scenarios a,b,...] [--keys N]
                        [--scale F] [--out DIR] [--plot FILE]
       scripts/bench.sh --summarise DIR     (re-print the summary of an earlier run)

  --quick          put_1, put_64 and range_lin_64, one round, smaller totals
  --rounds N       rounds (default 3; 1 with --quick)
  --scenarios L    comma-separated scenario names (default: all, or the quick set)
  --keys N         keys loaded for rss_1m_keys and restart_1m_keys (default 1000000)
  --scale F        multiply every request total by F (e.g. 0.1 while developing)
  --out DIR        where raw outputs, results.tsv and summary.json go
                   (default target/bench/<date>-<time>)
  --plot FILE      the latency-against-throughput PNG (default DIR/latency-throughput.png)

Environment: ETCD_VERSION (default v3.7.4), BENCHMARK_VERSION (go.etcd.io/etcd/v3
module version of the benchmark tool, default v3.6.5), WITAN_BIN, ETCD_BIN,
BENCHMARK_BIN (use these binaries instead of building), BENCH_PORT_BASE (default 21000;
loopback ports below 32768 so they never collide with ephemeral ones).
EOF
}

all_scenarios="put_1 put_64 put_256 txn_put_64 range_lin_1 range_lin_64 range_ser_64 range_1000_keys watch_10k lease_keepalive rss_1m_keys restart_1m_keys"
quick_scenarios="put_1 put_64 range_lin_64"

quick=0
rounds=""
scenarios=""
keys=1000000
scale=1
out=""
plot=""
summarise=""
while (($#)); do
    case $1 in
    --quick) quick=1 ;;
    --rounds) rounds=$2; shift ;;
    --scenarios) scenarios=${2//,/ }; shift ;;
    --keys) keys=$2; shift ;;
    --scale) scale=$2; shift ;;
    --out) out=$2; shift ;;
    --plot) plot=$2; shift ;;
    --summarise) summarise=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

summary_py="$root/scripts/bench_summary.py"
if [ -n "$summarise" ]; then
    exec python3 "$summary_py" "$summarise"
fi

if ((quick)); then
    : "${rounds:=1}"
    : "${scenarios:=$quick_scenarios}"
else
    : "${rounds:=3}"
    : "${scenarios:=$all_scenarios}"
fi
for s in $scenarios; do
    case " $all_scenarios " in *" $s "*) ;; *) echo "bench.sh: unknown scenario $s" >&2; exit 2 ;; esac
done

# Request totals (full mode); --quick and --scale shrink them.
declare -A total=(
    [put_1]=4000 [put_64]=40000 [put_256]=60000 [txn_put_64]=40000
    [range_lin_1]=8000 [range_lin_64]=100000 [range_ser_64]=100000
    [range_1000_keys]=3000 [watch_10k]=20 [lease_keepalive]=60000
)
if ((quick)); then
    total[put_1]=1500 total[put_64]=10000 total[range_lin_64]=25000
fi
scaled() { # total for scenario $1 after --scale, at least 10
    awk -v t="${total[$1]}" -v f="$scale" 'BEGIN { n = int(t * f); print (n < 10 ? 10 : n) }'
}

say() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools -----------------------------------------------------------------

cache=${XDG_CACHE_HOME:-$HOME/.cache}/witan/tools
ETCD_VERSION=${ETCD_VERSION:-v3.7.4}
# go.etcd.io/etcd/v3 is the module that holds tools/benchmark; its tags are
# served later than the server module's, so it has its own version.
BENCHMARK_VERSION=${BENCHMARK_VERSION:-v3.6.5}

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

have_go() {
    command -v go >/dev/null 2>&1 && return 0
    if [ -x /usr/local/go/bin/go ]; then
        export PATH="$PATH:/usr/local/go/bin"
        return 0
    fi
    return 1
}

# go_build DEST MODULE@VERSION PACKAGE [MAIN_GO]: builds PACKAGE in a scratch
# module that requires MODULE@VERSION; with MAIN_GO, that text is the main
# package (for libraries such as etcdmain that have no main of their own).
go_build() {
    local dest=$1 module=$2 package=$3 main_go=${4:-} dir
    dir=$(mktemp -d)
    (
        cd "$dir"
        export GOTOOLCHAIN=auto GOFLAGS=-mod=mod
        go mod init witan-bench-scratch >/dev/null 2>&1
        if [ -n "$main_go" ]; then
            printf '%s\n' "$main_go" >main.go
        fi
        go get "$module" >/dev/null 2>&1
        if [ -n "$main_go" ]; then
            go mod tidy >/dev/null 2>&1
        fi
        mkdir -p "$(dirname "$dest")"
        go build -o "$dest.tmp" "$package"
        mv "$dest.tmp" "$dest"
    )
    local rc=$?
    rm -rf "$dir"
    return $rc
}

etcd_main='package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }'

if [ -z "${WITAN_BIN:-}" ]; then
    say "building witan (release)"
    CARGO_INCREMENTAL=0 cargo build --release --locked -p witan-node --bin witan >&2
    WITAN_BIN=$root/target/release/witan
fi

etcd_source=""
if [ -n "${ETCD_BIN:-}" ]; then
    etcd_source="given by ETCD_BIN=$ETCD_BIN"
elif have_go; then
    ETCD_BIN=$cache/etcd-$ETCD_VERSION/etcd
    if [ ! -x "$ETCD_BIN" ]; then
        say "building etcd $ETCD_VERSION from the Go module proxy (go.etcd.io/etcd/server/v3/etcdmain)"
        go_build "$ETCD_BIN" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" . "$etcd_main" >&2 ||
            { say "building etcd $ETCD_VERSION failed"; ETCD_BIN=""; }
    fi
    [ -z "$ETCD_BIN" ] || etcd_source="built from source (go.etcd.io/etcd/server/v3@$ETCD_VERSION)"
fi
if [ -z "$ETCD_BIN" ]; then
    command -v etcd >/dev/null 2>&1 || apt_install etcd-server >&2
    ETCD_BIN=$(command -v etcd)
    etcd_source="Debian's etcd-server (Go missing or the source build failed)"
fi
etcd_version=$("$ETCD_BIN" --version | awk '/^etcd Version:/ { print $3 }')

if [ -z "${BENCHMARK_BIN:-}" ]; then
    BENCHMARK_BIN=$cache/etcd-benchmark-$BENCHMARK_VERSION/benchmark
    if [ ! -x "$BENCHMARK_BIN" ]; then
        have_go || apt_install golang-go >&2
        say "building etcd's benchmark tool $BENCHMARK_VERSION (go.etcd.io/etcd/v3/tools/benchmark)"
        go_build "$BENCHMARK_BIN" "go.etcd.io/etcd/v3@$BENCHMARK_VERSION" go.etcd.io/etcd/v3/tools/benchmark >&2 || {
            echo "bench.sh: etcd's benchmark tool could not be built; there is no replacement load generator, so no figures" >&2
            exit 1
        }
    fi
fi

# etcdctl (Debian's etcd-client) loads keys, finds the leader and polls health;
# it takes no part in any timed request.
command -v etcdctl >/dev/null 2>&1 || apt_install etcd-client >&2
command -v jq >/dev/null 2>&1 || apt_install jq >&2
command -v curl >/dev/null 2>&1 || apt_install curl >&2
command -v python3 >/dev/null 2>&1 || apt_install python3 >&2
export ETCDCTL_API=3

# --- clusters --------------------------------------------------------------

if [ -z "$out" ]; then
    out=$root/target/bench/$(date +%Y%m%d-%H%M%S)
fi
mkdir -p "$out/raw"
out=$(cd "$out" && pwd)
results=$out/results.tsv
: >"$results"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/witan-bench.XXXXXX")
port_base=${BENCH_PORT_BASE:-21000}
cluster_seq=0
declare -a member_pid=()
bench_pid=""
cluster_sys="" endpoints="" data=""

cleanup() {
    local pid
    [ -z "$bench_pid" ] || kill -TERM "$bench_pid" 2>/dev/null || true
    for pid in "${member_pid[@]}"; do
        [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The flags both systems share and that mean the same in both.
common_flags=(--heartbeat-interval 100 --election-timeout 1000 --snapshot-count 10000
    --quota-backend-bytes 8589934592)

client_port() { echo $((port_base + (cluster_seq % 50) * 6 + $1 * 2)); }
peer_port() { echo $((port_base + (cluster_seq % 50) * 6 + $1 * 2 + 1)); }

start_member() { # index: starts member m<index> of the current cluster
    local i=$1 bin initial="" j
    for j in 0 1 2; do
        initial+="${initial:+,}m$j=http://127.0.0.1:$(peer_port "$j")"
    done
    local args=(--name "m$i" --data-dir "$data/m$i"
        --listen-client-urls "http://127.0.0.1:$(client_port "$i")"
        --advertise-client-urls "http://127.0.0.1:$(client_port "$i")"
        --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")"
        --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")"
        --initial-cluster "$initial" --initial-cluster-state new
        --initial-cluster-token "bench-$cluster_sys-$cluster_seq" "${common_flags[@]}")
    if [ "$cluster_sys" = witan ]; then
        bin=$WITAN_BIN
    else
        bin=$ETCD_BIN
        args+=(--log-level warn)
    fi
    WITAN_LOG=warn "$bin" "${args[@]}" >>"$data/m$i.log" 2>&1 &
    member_pid[i]=$!
}

start_cluster() { # witan|etcd: a fresh 3-member cluster, ready to serve
    cluster_sys=$1
    cluster_seq=$((cluster_seq + 1))
    data=$scratch/$cluster_sys-$cluster_seq
    mkdir -p "$data"
    local i eps=()
    for i in 0 1 2; do
        eps+=("127.0.0.1:$(client_port "$i")")
        start_member "$i"
    done
    endpoints=$(IFS=,; echo "${eps[*]}")
    wait_ready "$endpoints" 60
}

wait_ready() { # endpoints seconds
    local deadline=$((SECONDS + $2))
    until etcdctl --endpoints="$1" --command-timeout=2s endpoint health >/dev/null 2>&1 &&
        etcdctl --endpoints="$1" --command-timeout=2s put bench-ready x >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "$cluster_sys cluster at $1 not healthy after $2 s; logs in $out/raw"
            cp "$data"/m*.log "$out/raw/" 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
}

stop_member() { # index
    local i=$1 pid=${member_pid[$1]} n=0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((n < 100)); do sleep 0.1; n=$((n + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    member_pid[i]=""
}

stop_cluster() {
    local i
    for i in 0 1 2; do stop_member "$i"; done
    rm -rf "$data"
}

leader_index() { # prints the index (0-2) of the current leader
    # A busy member may not answer in time: retry for a while, and fail the
    # run only if no leader shows at all.
    local deadline=$((SECONDS + 60)) idx
    while :; do
        idx=$(etcdctl --endpoints="$endpoints" --command-timeout=10s endpoint status -w json 2>/dev/null |
            jq -r '[.[] | (.Status.header.member_id == .Status.leader)] | index(true)' 2>/dev/null) || idx=""
        if [[ $idx =~ ^[0-2]$ ]]; then
            echo "$idx"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            say "no leader found among $endpoints"
            return 1
        fi
        sleep 1
    done
}

# --- measurement -----------------------------------------------------------

round=0
record() { # scenario metric value
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$1" "$cluster_sys" "$2" "$3" >>"$results"
}

# bench SCENARIO REQUESTS ARGS...: runs etcd's benchmark tool against the
# cluster and records requests/s and the p50/p99 latency (ms) it reports (the
# last report in its output, which for watch-latency is the watch events'
# report), and, when REQUESTS > 0, the CPU time all 3 members used per request.
bench() {
    local scenario=$1 requests=$2 raw cpu0 cpu1
    shift 2
    cpu0=$(members_cpu_ticks)
    raw=$out/raw/$scenario.$cluster_sys.r$round.txt
    # In the background so INT/TERM are handled at once (bash runs traps
    # only between foreground commands); cleanup stops it.
    "$BENCHMARK_BIN" --precise --endpoints="$endpoints" "$@" >"$raw" 2>&1 &
    bench_pid=$!
    if ! wait "$bench_pid"; then
        say "benchmark failed for $scenario on $cluster_sys; see $raw"
        record "$scenario" failed 1
        return 0
    fi
    cpu1=$(members_cpu_ticks)
    if ((requests > 0)); then
        record "$scenario" server_cpu_us_per_req "$(awk -v d=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" \
            -v n="$requests" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
    fi
    tr '\r' '\n' <"$raw" | awk -v s="$scenario" -v sys="$cluster_sys" -v r="$round" '
        /Requests\/sec:/ { rps = $2 }
        $1 == "50%" && $2 == "in" { p50 = $3 * 1000 }
        $1 == "99%" && $2 == "in" { p99 = $3 * 1000 }
        /Error distribution/ { errors = 1 }
        END {
            if (rps != "") printf "%s\t%s\t%s\trps\t%s\n", r, s, sys, rps
            if (p50 != "") printf "%s\t%s\t%s\tp50_ms\t%s\n", r, s, sys, p50
            if (p99 != "") printf "%s\t%s\t%s\tp99_ms\t%s\n", r, s, sys, p99
            if (errors) printf "%s\t%s\t%s\terrors\t1\n", r, s, sys
        }' >>"$results"
    if grep -q "Error distribution" "$raw"; then
        say "$scenario on $cluster_sys: some requests failed; see $raw"
    fi
}

# members_cpu_ticks: user+system CPU ticks used so far by the 3 members.
members_cpu_ticks() {
    local i t=0 v
    for i in 0 1 2; do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that
        # ends the command name.
        v=$(sed 's/.*) //' "/proc/${member_pid[$i]}/stat" 2>/dev/null | awk '{ print $12 + $13 }')
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# wal_fsync INDEX: "sum count" of etcd_disk_wal_fsync_duration_seconds on
# member INDEX (both systems export it under etcd's name).
wal_fsync() {
    curl -s --max-time 5 "http://127.0.0.1:$(client_port "$1")/metrics" |
        awk '/^etcd_disk_wal_fsync_duration_seconds_sum/ { s = $2 }
             /^etcd_disk_wal_fsync_duration_seconds_count/ { c = $2 }
             END { print (s == "" ? 0 : s), (c == "" ? 0 : c) }'
}

# bench_writes SCENARIO TOTAL ARGS...: bench, plus the leader's WAL fsyncs
# during the run: how many, their mean time, and requests per fsync (how
# well group commit shares one fsync among concurrent writes).
bench_writes() {
    local scenario=$1 n=$2 leader s0 c0 s1 c1
    shift 2
    leader=$(leader_index)
    read -r s0 c0 < <(wal_fsync "$leader")
    bench "$scenario" "$n" "$@"
    read -r s1 c1 < <(wal_fsync "$leader")
    awk -v s0="$s0" -v c0="$c0" -v s1="$s1" -v c1="$c1" -v n="$n" -v r="$round" \
        -v sc="$scenario" -v sys="$cluster_sys" 'BEGIN {
            c = c1 - c0
            if (c <= 0) exit
            printf "%s\t%s\t%s\tleader_fsyncs\t%d\n", r, sc, sys, c
            printf "%s\t%s\t%s\tfsync_mean_ms\t%.4f\n", r, sc, sys, (s1 - s0) * 1000 / c
            printf "%s\t%s\t%s\twrites_per_fsync\t%.2f\n", r, sc, sys, n / c
        }' >>"$results"
}

value256=$(printf 'v%.0s' $(seq 256))

load_1000_keys() { # r0000000 .. r0000999, 8-byte keys, 256-byte values, 8 txns of 125 puts
    local t k
    for t in $(seq 0 7); do
        {
            echo
            for k in $(seq $((t * 125)) $((t * 125 + 124))); do
                printf 'put r%07d %s\n' "$k" "$value256"
            done
            printf '\n\n'
        } | etcdctl --endpoints="$endpoints" --command-timeout=10s txn >/dev/null
    done
}

rss_mb() { # summed VmRSS of the 3 members, MB
    local i kb=0 v
    for i in 0 1 2; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/${member_pid[$i]}/status")
        kb=$((kb + v))
    done
    awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# rss_1m_keys and restart_1m_keys share one loaded cluster: the load is the
# longest step of the run.
loaded_scenarios() { # rss? restart?
    local want_rss=$1 want_restart=$2 n=$keys follower t0 ep
    bench load_1m_keys "$n" --target-leader --clients 256 --conns 64 put --sequential-keys \
        --key-size 8 --val-size 256 --key-space-size "$n" --total "$n"
    sleep 5
    if ((want_rss)); then
        record rss_1m_keys rss_mb "$(rss_mb)"
        record rss_1m_keys disk_mb "$(du -sb "$data" | awk '{ printf "%.1f", $1 / 1e6 }')"
    fi
    if ((want_restart)); then
        etcdctl --endpoints="$endpoints" put benchkey "$value256" >/dev/null
        follower=$((($(leader_index) + 1) % 3))
        ep=127.0.0.1:$(client_port "$follower")
        stop_member "$follower"
        t0=$(now_ms)
        start_member "$follower"
        # Serving = answers a linearizable get (it has rejoined and applied
        # up to the leader's commit index).
        until etcdctl --endpoints="$ep" --command-timeout=1s get benchkey >/dev/null 2>&1; do
            if (($(now_ms) - t0 > 300000)); then
                say "restarted $cluster_sys member did not serve within 300 s"
                record restart_1m_keys failed 1
                return 0
            fi
        done
        record restart_1m_keys restart_ms $(($(now_ms) - t0))
    fi
}

run_scenario() { # scenario (on the current cluster)
    local s=$1 t=""
    if [ -n "${total[$s]:-}" ]; then t=$(scaled "$s"); fi
    case $s in
    put_1) bench_writes "$s" "$t" --target-leader --clients 1 --conns 1 put --key-size 8 --val-size 256 --key-space-size 100000 --total "$t" ;;
    put_64) bench_writes "$s" "$t" --target-leader --clients 64 --conns 16 put --key-size 8 --val-size 256 --key-space-size 100000 --total "$t" ;;
    put_256) bench_writes "$s" "$t" --target-leader --clients 256 --conns 64 put --key-size 8 --val-size 256 --key-space-size 100000 --total "$t" ;;
    txn_put_64) bench_writes "$s" "$t" --target-leader --clients 64 --conns 16 txn-put --key-size 8 --val-size 256 --key-space-size 100000 --txn-ops 1 --total "$t" ;;
    range_lin_1 | range_lin_64 | range_ser_64)
        local c=1 n=1 consistency=l
        [ "$s" = range_lin_1 ] || { c=64; n=16; }
        [ "$s" = range_ser_64 ] && consistency=s
        etcdctl --endpoints="$endpoints" put benchkey "$value256" >/dev/null
        bench "$s" "$t" --clients "$c" --conns "$n" range benchkey --consistency "$consistency" --total "$t"
        ;;
    range_1000_keys)
        load_1000_keys
        bench "$s" "$t" --clients 16 --conns 4 range r0000000 r0001000 --consistency l --total "$t"
        ;;
    watch_10k)
        bench "$s" 0 --clients 100 --conns 10 watch-latency --streams 100 --watchers-per-stream 100 \
            --put-rate 2 --put-total "$t" --key-size 8 --val-size 256
        ;;
    lease_keepalive) bench "$s" "$t" --clients 64 --conns 16 lease-keepalive --total "$t" ;;
    esac
}

# --- the run ---------------------------------------------------------------

read -r load_start _ </proc/loadavg
{
    echo "etcd_version=$etcd_version"
    echo "etcd_source=$etcd_source"
    echo "benchmark_tool=go.etcd.io/etcd/v3/tools/benchmark@$BENCHMARK_VERSION"
    echo "witan_commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine=$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "rounds=$rounds"
    echo "quick=$quick"
    echo "scale=$scale"
    echo "keys=$keys"
    echo "load_start=$load_start"
} >"$out/meta"
say "witan: $WITAN_BIN"
say "etcd $etcd_version: $etcd_source"
say "load generator: etcd's benchmark tool $BENCHMARK_VERSION ($BENCHMARK_BIN)"
say "results in $out; load average now $load_start"

for round in $(seq 1 "$rounds"); do
    if ((round % 2)); then order="witan etcd"; else order="etcd witan"; fi
    read -r load_round _ </proc/loadavg
    echo "load_round_$round=$load_round" >>"$out/meta"
    did_loaded=0
    for s in $scenarios; do
        if [ "$s" = rss_1m_keys ] || [ "$s" = restart_1m_keys ]; then
            ((did_loaded)) && continue
            did_loaded=1
            want_rss=0 want_restart=0
            case " $scenarios " in *" rss_1m_keys "*) want_rss=1 ;; esac
            case " $scenarios " in *" restart_1m_keys "*) want_restart=1 ;; esac
            for sys in $order; do
                say "round $round/$rounds: $keys keys (rss_1m_keys, restart_1m_keys) on $sys"
                start_cluster "$sys"
                loaded_scenarios "$want_rss" "$want_restart"
                stop_cluster
            done
            continue
        fi
        for sys in $order; do
            say "round $round/$rounds: $s on $sys"
            start_cluster "$sys"
            run_scenario "$s"
            stop_cluster
        done
    done
done
read -r load_end _ </proc/loadavg
echo "load_end=$load_end" >>"$out/meta"
echo "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$out/meta"

# --- summary and plot ------------------------------------------------------

python3 "$summary_py" "$out" --plot-data "$out/plot.dat" >"$out/summary.txt"
if [ -z "$plot" ]; then plot=$out/latency-throughput.png; fi
command -v gnuplot >/dev/null 2>&1 || apt_install gnuplot-nox >&2 || true
if command -v gnuplot >/dev/null 2>&1 && [ -s "$out/plot.dat" ]; then
    gnuplot -e "datafile='$out/plot.dat'; outfile='$plot'; subtitle='etcd $etcd_version, $(nproc) cores, load $load_start-$load_end'" \
        "$root/scripts/bench_plot.gp" || say "plotting failed"
    [ -f "$plot" ] && say "plot: $plot"
fi
cat "$out/summary.txt"
