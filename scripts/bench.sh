#!/usr/bin/env bash
# elastic-lb against the bare baseline server (examples/bare_server.rs), in one run, A B A B.
#
# elastic-lb runs the shipped default machine set and strategy (one medium machine at boot,
# the default pool, least-connections, per-request routing), with instant service so that
# the balancer, not the simulated service time, is measured.
#
#   (a) closed loop, 50 connections: requests/s and p99     (elastic-lb load --json)
#   (a') the same with a second, independent generator       (examples/pingpong.rs: one
#        thread, counting only), plus every run's CPU: server CPU per request and the
#        generator's CPU use (a saturated generator compresses every ratio towards 1)
#   (b) connect, one request, close: connections/s and p99  (load --connect-per-request)
#   (c) RSS per idle connection at 5,000 open connections   (load --idle, /proc/PID/status)
#   plus the scale-up reaction time (examples/scale_reaction.rs, in-process).
#
# The `proxy` section puts elastic-lb in proxy mode and HAProxy (Debian's package, mode tcp,
# nbthread 2; installed by this script when missing) in front of the same upstream (the bare
# server) and compares them, interleaved, on the same three loads: closed loop with both
# generators, connect+request+close, with CPU per request of each proxy.
#
# Every number is compared as a ratio measured in the same run: the machine is shared and
# noisy. The contenders take turns within each round, and who goes first rotates from round
# to round, so neither always runs right after the other. In the proxy section each load runs
# against the contenders back to back (the pairs share the host's slower swings). Only
# loopback addresses are used.
#
#   scripts/bench.sh [all|simulated|proxy]   (env: ROUNDS=2 for the simulated section and 8
#   for the proxy section, RUN=5s IDLE=5000 PORT=27070,
#   and for the proxy section LB_THREADS= (elastic-lb's event-loop threads, listener.threads;
#   default one per core), LB_IO=auto (listener.io: auto, io_uring or epoll),
#   HAP_THREADS=2 (HAProxy's nbthread), PIN=1 (pins the threads of both proxies, one per
#   CPU in turn: elastic-lb's listener.pin_threads and HAProxy's cpu-map) and CEILING=1, which also
#   measures the two featureless proxies of benches/ceiling -- the epoll floor and the
#   io_uring ceiling of this host -- in the same rounds and prints a second table)
#
# Takes about a minute and a half for the simulated section and four minutes for the proxy
# section (eight rounds: its margins are smaller than one round's noise) after the build.
set -euo pipefail
cd "$(dirname "$0")/.."

SECTION=${1:-all}
case $SECTION in
all | simulated | proxy) ;;
*) echo "usage: scripts/bench.sh [all|simulated|proxy]" >&2; exit 2 ;;
esac

SIM_ROUNDS=${ROUNDS:-2}
PROXY_ROUNDS=${ROUNDS:-8}
RUN=${RUN:-5s}
IDLE=${IDLE:-5000}
PORT=${PORT:-27070}
LB_ADDR=127.0.0.1:$PORT
BARE_ADDR=127.0.0.1:$((PORT + 10))

cargo build --release --examples --bins >&2
command -v python3 >/dev/null || { echo "error: python3 is needed for the report" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-target}/release

# 5,000 connections take 5,000 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE + 200)) ]; then
    echo "error: ulimit -n is $(ulimit -n); need more than $((IDLE + 200))" >&2
    exit 1
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/lb.toml" <<TOML
[listener]
address = "$LB_ADDR"
max_connections = 20000
idle_timeout = "0s"
[admin]
address = "off"
[load.requests]
service_ms_per_unit = 0
TOML
# (c) holds 5,000 idle connections: with the default reservations (1-11 units each) the
# default pool (2,800 units) would refuse most of them, so they hold none here.
{ cat "$tmp/lb.toml"; printf '[load]\nconnection_min = 0.0\nconnection_max = 0.0\n'; } >"$tmp/lb-idle.toml"

wait_port() { # ADDR
    local host=${1%:*} port=${1##*:}
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "error: nothing listens on $1" >&2
    exit 1
}

# start NAME [CONFIG] -> sets SERVER_PID and SERVER_ADDR
start() {
    case $1 in
    lb)
        RUST_LOG=warn "$BIN/elastic-lb" --config "${2:-$tmp/lb.toml}" 2>>"$tmp/lb.log" &
        SERVER_ADDR=$LB_ADDR ;;
    bare)
        "$BIN/examples/bare_server" "$BARE_ADDR" 2>>"$tmp/bare.log" &
        SERVER_ADDR=$BARE_ADDR ;;
    esac
    SERVER_PID=$!
    pids+=("$SERVER_PID")
    wait_port "$SERVER_ADDR"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The words after ROUND, rotated left by ROUND - 1: round 1 keeps the order, round 2 starts
# with the second word, and so on.
rotated() { # ROUND WORD...
    local n=$(( ($1 - 1) % ($# - 1) )); shift
    local words=("$@")
    echo "${words[@]:n}" "${words[@]:0:n}"
}

# CPU time (user + system) of a running process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# gen TEST SRV ROUND PID -- CMD...: runs a generator CMD with stdout to TEST-SRV-ROUND.json and
# records the server's (PID) and the generator's CPU seconds in TEST-SRV-ROUND.cpu.
gen() {
    local test=$1 srv=$2 round=$3 pid=$4; shift 5
    local before after
    before=$(cpu_ticks "$pid")
    TIMEFORMAT='%U %S %R'
    { time "$@" >"$tmp/$test-$srv-$round.json"; } 2>"$tmp/$test-$srv-$round.time"
    after=$(cpu_ticks "$pid")
    read -r gu gs gr < <(tail -n 1 "$tmp/$test-$srv-$round.time")
    python3 -c "import json,sys; print(json.dumps({'server_s': ($after - $before) / $TICK, 'gen_s': $gu + $gs, 'wall_s': $gr}))" \
        >"$tmp/$test-$srv-$round.cpu"
}

# closed_loops TEST_A TEST_P SRV ROUND PID ADDR: the closed loop of 50 connections against
# ADDR with both generators, `elastic-lb load` (TEST_A) then pingpong (TEST_P).
closed_loops() {
    local a=$1 p=$2 srv=$3 round=$4 pid=$5 addr=$6
    echo "round $round: $srv closed loop" >&2
    gen "$a" "$srv" "$round" "$pid" -- "$BIN/elastic-lb" load --target "$addr" \
        --connections 50 --duration "$RUN" --mix small=100 --json
    echo "round $round: $srv closed loop (pingpong)" >&2
    gen "$p" "$srv" "$round" "$pid" -- "$BIN/examples/pingpong" "$addr" 50 "${RUN%s}"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2

if [ "$SECTION" != proxy ]; then
# (a) and (b): both servers up; alternate the client between them.
start lb; LB_PID=$SERVER_PID
start bare; BARE_PID=$SERVER_PID
for round in $(seq "$SIM_ROUNDS"); do
    for srv in $(rotated "$round" lb bare); do
        addr=$LB_ADDR; pid=$LB_PID
        [ "$srv" = bare ] && { addr=$BARE_ADDR; pid=$BARE_PID; }
        closed_loops a p "$srv" "$round" "$pid" "$addr"
    done
    for srv in $(rotated "$round" lb bare); do
        addr=$LB_ADDR; [ "$srv" = bare ] && addr=$BARE_ADDR
        echo "round $round: $srv connect-per-request" >&2
        "$BIN/elastic-lb" load --target "$addr" --connections 16 --duration "$RUN" \
            --mix small=100 --connect-per-request --json >"$tmp/b-$srv-$round.json"
    done
done
stop "$LB_PID"; stop "$BARE_PID"

# (c): a fresh process each time, so earlier load does not inflate the "before".
for round in $(seq "$SIM_ROUNDS"); do
    for srv in $(rotated "$round" lb bare); do
        echo "round $round: $srv $IDLE idle connections" >&2
        start "$srv" "$tmp/lb-idle.toml"
        sleep 0.3
        before=$(rss_kib "$SERVER_PID")
        "$BIN/elastic-lb" load --target "$SERVER_ADDR" --connections "$IDLE" --idle \
            --duration 8s --json >"$tmp/c-$srv-$round.json" 2>"$tmp/c-$srv-$round.err" &
        client=$!
        for _ in $(seq 300); do
            grep -q "connections open" "$tmp/c-$srv-$round.err" && break
            sleep 0.05
        done
        sleep 0.5
        after=$(rss_kib "$SERVER_PID")
        open=$(sed -n 's/^idle: \([0-9]*\) connections open$/\1/p' "$tmp/c-$srv-$round.err")
        echo "{\"before_kib\": $before, \"after_kib\": $after, \"open\": ${open:-0}}" \
            >"$tmp/c-$srv-$round.rss"
        wait "$client" || true
        stop "$SERVER_PID"
    done
done

echo "scale-up reaction" >&2
"$BIN/examples/scale_reaction" 30 --json >"$tmp/reaction.json"

python3 - "$tmp" "$SIM_ROUNDS" "$IDLE" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_report import Runs
runs = Runs(sys.argv[1], int(sys.argv[2]))
idle = int(sys.argv[3])
def rss(srv):
    out = []
    for r in range(1, runs.rounds + 1):
        d = runs.load(f"c-{srv}-{r}.rss")
        assert d["open"] == idle, f"c-{srv}-{r}: only {d['open']} of {idle} connections open"
        out.append((d["after_kib"] - d["before_kib"]) / d["open"])
    return out
series, cpu, row = runs.series, runs.cpu, runs.row
row("(a) 50 conns closed loop, req/s", series("a", "lb", "requests_per_s"),
    series("a", "bare", "requests_per_s"), "{:.0f}", lambda a, b, r: r >= 0.85)
row("(a) p99 latency, ms", series("a", "lb", "p99"), series("a", "bare", "p99"), "{:.2f}")
row("(a) server CPU per request, us", cpu("a", "lb", "us_per"), cpu("a", "bare", "us_per"),
    "{:.2f}")
row("(a) generator CPU, % of a core", cpu("a", "lb", "gen"), cpu("a", "bare", "gen"), "{:.0f}",
    ratio=False)
row("(a') pingpong closed loop, req/s", series("p", "lb", "requests_per_s"),
    series("p", "bare", "requests_per_s"), "{:.0f}", lambda a, b, r: r >= 0.85)
row("(a') server CPU per request, us", cpu("p", "lb", "us_per"), cpu("p", "bare", "us_per"),
    "{:.2f}")
row("(a') generator CPU, % of a core", cpu("p", "lb", "gen"), cpu("p", "bare", "gen"), "{:.0f}",
    ratio=False)
row("(b) connect+request+close, conn/s", series("b", "lb", "connections_per_s"),
    series("b", "bare", "connections_per_s"), "{:.0f}", lambda a, b, r: r >= 0.80)
row("(b) p99 cycle latency, ms", series("b", "lb", "p99"), series("b", "bare", "p99"), "{:.2f}")
row(f"(c) RSS per idle conn ({idle}), KiB", rss("lb"), rss("bare"), "{:.1f}",
    lambda a, b, r: a <= 16.0)
runs.print_table(("benchmark", "elastic-lb", "baseline", "ratio", "target", "elastic-lb rounds",
                  "baseline rounds"))
re = runs.load("reaction.json")
verdict = "PASS" if re["max_us"] <= 10_000 else "FAIL"
print(f"\nscale-up reaction (connect of the pushing connection -> new machine listed), "
      f"{re['trials']} trials: p50 {re['p50_us']/1000:.2f} ms, p90 {re['p90_us']/1000:.2f} ms, "
      f"max {re['max_us']/1000:.2f} ms (target <= 10 ms: {verdict})")
PY
fi

if [ "$SECTION" != simulated ]; then
# The proxy section: elastic-lb (proxy mode, one upstream) and HAProxy in front of the same
# bare server, interleaved.
if ! command -v haproxy >/dev/null; then
    echo "installing haproxy (Debian package)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y haproxy >&2; else sudo apt-get install -y haproxy >&2; fi
fi
UP_ADDR=127.0.0.1:$((PORT + 20))
LBP_ADDR=127.0.0.1:$((PORT + 21))
HAP_ADDR=127.0.0.1:$((PORT + 22))
# One medium upstream, connections reserve nothing (as HAProxy has no reservations) and the
# defaults otherwise: health checks, passive checks, server timeout, idle timeout off as below.
cat >"$tmp/lbp.toml" <<TOML
[listener]
address = "$LBP_ADDR"
max_connections = 20000
idle_timeout = "0s"
threads = ${LB_THREADS:-0}
io = "${LB_IO:-auto}"
pin_threads = $([ "${PIN:-0}" = 1 ] && echo true || echo false)
[admin]
address = "off"
[load]
connection_min = 0.0
connection_max = 0.0
[backend]
mode = "proxy"
[[backend.upstreams]]
address = "$UP_ADDR"
size = "medium"
TOML
# HAProxy as its package ships it, plus what the comparison needs: mode tcp, two threads
# (one per core, as elastic-lb's runtime), no logging (elastic-lb logs nothing per
# connection at RUST_LOG=warn either).
# With PIN=1 HAProxy's thread i stays on the i-th CPU this script may use, as elastic-lb's
# loops do with listener.pin_threads.
# One `cpu-map 1/THREAD CPU` line per thread (valid in HAProxy 2.6 for any thread count).
HAP_CPU_MAP=
if [ "${PIN:-0}" = 1 ]; then
    HAP_CPU_MAP=$(python3 -c '
import os, sys
cpus = sorted(os.sched_getaffinity(0))
print("\n    ".join(f"cpu-map 1/{i + 1} {cpus[i % len(cpus)]}" for i in range(int(sys.argv[1]))))' \
        "${HAP_THREADS:-2}")
fi
cat >"$tmp/haproxy.cfg" <<CFG
global
    nbthread ${HAP_THREADS:-2}
    ${HAP_CPU_MAP}
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind $HAP_ADDR
    default_backend be
backend be
    server up $UP_ADDR
CFG
"$BIN/examples/bare_server" "$UP_ADDR" 2>>"$tmp/bare.log" &
UP_PID=$!; pids+=("$UP_PID")
wait_port "$UP_ADDR"
RUST_LOG=warn "$BIN/elastic-lb" --config "$tmp/lbp.toml" 2>>"$tmp/lbp.log" &
LBP_PID=$!; pids+=("$LBP_PID")
echo "elastic-lb event-loop threads: ${LB_THREADS:-one per core}, io ${LB_IO:-auto}; HAProxy nbthread ${HAP_THREADS:-2}; pinned: $([ "${PIN:-0}" = 1 ] && echo "yes ($(echo $HAP_CPU_MAP))" || echo no)" >&2
wait_port "$LBP_ADDR"
# In the foreground (-db), in this script's session like elastic-lb: a daemon (-D) calls setsid,
# and with kernel.sched_autogroup_enabled a new session is a scheduling group of its own,
# which costs HAProxy 2.7 x the context switches here and would flatter the ratio.
haproxy -db -f "$tmp/haproxy.cfg" 2>>"$tmp/haproxy.log" &
HAP_PID=$!; pids+=("$HAP_PID")
wait_port "$HAP_ADDR"
echo "haproxy: $(haproxy -v | head -n 1)" >&2
PROXIES="lbp hap"
if [ "${CEILING:-0}" = 1 ]; then
    # The featureless proxies, as many threads as elastic-lb has event loops.
    cargo build --release --manifest-path benches/ceiling/Cargo.toml \
        --target-dir "${CARGO_TARGET_DIR:-target}/ceiling" >&2
    CEIL_BIN=${CARGO_TARGET_DIR:-target}/ceiling/release
    EPL_ADDR=127.0.0.1:$((PORT + 23))
    URL_ADDR=127.0.0.1:$((PORT + 24))
    "$CEIL_BIN/epoll_proxy" "$EPL_ADDR" "$UP_ADDR" "${LB_THREADS:-$(nproc)}" 2>>"$tmp/epl.log" &
    EPL_PID=$!; pids+=("$EPL_PID")
    "$CEIL_BIN/uring_proxy" "$URL_ADDR" "$UP_ADDR" "${LB_THREADS:-$(nproc)}" 2>>"$tmp/url.log" &
    URL_PID=$!; pids+=("$URL_PID")
    wait_port "$EPL_ADDR"; wait_port "$URL_ADDR"
    PROXIES="lbp hap epl url"
fi
# A short unmeasured warm-up of each path (first connections, page faults, health probes).
proxy_addr() { case $1 in lbp) echo "$LBP_ADDR" ;; hap) echo "$HAP_ADDR" ;; epl) echo "$EPL_ADDR" ;;
    url) echo "$URL_ADDR" ;; esac; }
proxy_pid() { case $1 in lbp) echo "$LBP_PID" ;; hap) echo "$HAP_PID" ;; epl) echo "$EPL_PID" ;;
    url) echo "$URL_PID" ;; esac; }
for srv in $PROXIES; do
    "$BIN/elastic-lb" load --target "$(proxy_addr "$srv")" --connections 50 --duration 1s \
        --mix small=100 --json >/dev/null
done
# Each load runs against the contenders back to back, so the machine's slower swings (other
# tenants of the host) fall on both of a pair alike and cancel in its ratio; who goes first
# rotates from round to round.
for round in $(seq "$PROXY_ROUNDS"); do
    # shellcheck disable=SC2086 # PROXIES is a list of words
    for srv in $(rotated "$round" $PROXIES); do
        echo "round $round: $srv closed loop" >&2
        gen pa "$srv" "$round" "$(proxy_pid "$srv")" -- "$BIN/elastic-lb" load \
            --target "$(proxy_addr "$srv")" --connections 50 --duration "$RUN" --mix small=100 --json
    done
    # shellcheck disable=SC2086
    for srv in $(rotated "$round" $PROXIES); do
        echo "round $round: $srv closed loop (pingpong)" >&2
        gen pp "$srv" "$round" "$(proxy_pid "$srv")" -- "$BIN/examples/pingpong" \
            "$(proxy_addr "$srv")" 50 "${RUN%s}"
    done
    # shellcheck disable=SC2086
    for srv in $(rotated "$round" $PROXIES); do
        echo "round $round: $srv proxy connect-per-request" >&2
        gen pb "$srv" "$round" "$(proxy_pid "$srv")" -- "$BIN/elastic-lb" load \
            --target "$(proxy_addr "$srv")" --connections 16 --duration "$RUN" --mix small=100 \
            --connect-per-request --json
    done
done
stop "$LBP_PID"; stop "$HAP_PID"
[ "${CEILING:-0}" = 1 ] && { stop "$EPL_PID"; stop "$URL_PID"; }
stop "$UP_PID"

python3 - "$tmp" "$PROXY_ROUNDS" "${CEILING:-0}" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_report import Runs, ceiling_table
runs = Runs(sys.argv[1], int(sys.argv[2]))
series, cpu, row = runs.series, runs.cpu, runs.row
faster = lambda a, b, r: r >= 1.05
lower = lambda a, b, r: a <= b
row("(pa) 50 conns closed loop, req/s", series("pa", "lbp", "requests_per_s"),
    series("pa", "hap", "requests_per_s"), "{:.0f}", faster)
row("(pa) p99 latency, ms", series("pa", "lbp", "p99"), series("pa", "hap", "p99"), "{:.2f}", lower)
row("(pa) proxy CPU per request, us", cpu("pa", "lbp", "us_per"), cpu("pa", "hap", "us_per"), "{:.2f}")
row("(pa) generator CPU, % of a core", cpu("pa", "lbp", "gen"), cpu("pa", "hap", "gen"), "{:.0f}",
    ratio=False)
row("(pp) pingpong closed loop, req/s", series("pp", "lbp", "requests_per_s"),
    series("pp", "hap", "requests_per_s"), "{:.0f}", faster)
row("(pp) proxy CPU per request, us", cpu("pp", "lbp", "us_per"), cpu("pp", "hap", "us_per"), "{:.2f}")
row("(pb) connect+request+close, conn/s", series("pb", "lbp", "connections_per_s"),
    series("pb", "hap", "connections_per_s"), "{:.0f}", faster)
row("(pb) p99 cycle latency, ms", series("pb", "lbp", "p99"), series("pb", "hap", "p99"), "{:.2f}",
    lower)
row("(pb) proxy CPU per connection, us", cpu("pb", "lbp", "us_per"), cpu("pb", "hap", "us_per"),
    "{:.2f}")
print()
runs.print_table(("proxy benchmark", "elastic-lb", "HAProxy", "ratio", "target",
                  "elastic-lb rounds", "HAProxy rounds"))
if sys.argv[3] == "1":
    print()
    ceiling_table(runs)
PY
fi
