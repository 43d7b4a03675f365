#!/usr/bin/env bash
# Soak test (issue 11 item 9): the release daemon under mixed load with faults for a bounded
# time, then checks of the invariants that must hold however it was treated.
#
#   scripts/soak.sh [--minutes N] [--proxy] [--keep]
#
#   --minutes N   length of the main phase (default 5; 0.5 to 120); a 60-s warm-up comes
#                 first, so the whole run takes N + 1 minutes and about 30 s of settling
#   --proxy       also run a proxy-mode daemon in front of four python echo upstreams that
#                 are killed, restarted, SIGSTOPped and SIGCONTed meanwhile
#   --keep        keep the work directory (configs, logs, client summaries); it is always
#                 kept when a check fails
#
# Needs bash, python3 and cargo (it runs `cargo build --release`). Everything listens on and
# connects to 127.0.0.1 only, on free ports picked at start. Every process it starts is
# stopped on exit (trap), and every loop and wait is bounded.
#
# What runs, twice: a warm-up phase (60 s) and the main phase (N minutes), with the same
# load and faults (docs/soak.md has the numbers):
#   load       three `elastic-lb load --json` runs: two closed loops with different mixes of
#              small/medium/large, one open loop (--rate)
#   clients    scripts/soak/*.py: never-reading pipeliners (1 KiB payloads), slowloris (one
#              byte a second, cut by listener.line_timeout), connection floods past
#              listener.max_connections (ERR overloaded), too-long lines, invalid UTF-8
#   faults     SIGHUP storms (the config file swapped between two valid variants, bursts of 5
#              reloads), one reload with a broken file per phase (its ERROR line is expected),
#              strategy switches through PUT /api/strategy (all 7 strategies); with --proxy,
#              upstreams killed / restarted / stopped / continued in turn
# and then the checks (scripts/soak/report.py prints one PASS/FAIL line each):
#   (1) requests_ok + requests_failed in /api/stats = the requests the clients sent and saw
#       answered (ok and failed separately too); no client gave up on a reply
#   (2) after the load, every machine's used, connections and queued are 0, connections_open 0
#   (3) RSS after the main phase within 10 % of the level settled after the warm-up
#   (4) no "panicked" and no ERROR log line but the broken reloads' own
#   (5) the clients' protocol checks (order, payloads, expected error codes) found nothing
#   (6) the faults happened (overloaded, timeout, too-long, bad-request seen; 7 strategies
#       switched; reloads applied), so that a pass is not vacuous
#   (7) SIGTERM at the end: graceful shutdown, exit status 0
# with --proxy, (2)-(5) and (7) for the proxy daemon too, (5) meaning: every byte echoed
# back intact, no stream hung. Exit status 0 only when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=5
PROXY=0
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
    --proxy) PROXY=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
done
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 1; }
# Durations in whole seconds: a 60-s warm-up, then N minutes of main phase.
read -r WARM MAIN < <(python3 - "$MINUTES" <<'PY'
import sys
try:
    m = float(sys.argv[1])
except ValueError:
    sys.exit("error: --minutes takes a number")
if not 0.5 <= m <= 120:
    sys.exit("error: --minutes must be between 0.5 and 120")
print(60, round(m * 60))
PY
)
TOTAL=$((WARM + MAIN))

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/elastic-lb
SOAK=scripts/soak
export PYTHONDONTWRITEBYTECODE=1  # leave no __pycache__ in the tree
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/elastic-lb-soak.XXXXXX")
pids=()          # every process started, stopped by cleanup
UP_PIDS=()       # echo upstreams (--proxy), by index
UP_STOPPED=()    # 1 while SIGSTOPped
LB_PID=
PX_PID=
RESULT=1
cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${UP_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" "${UP_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Bounded: whatever ignores SIGTERM for 5 s is killed.
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}" "${UP_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}" "${UP_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$RESULT" = 0 ] && [ "$KEEP" = 0 ]; then
        rm -rf "$work"
    else
        echo "soak: work directory kept: $work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "${EPOCHREALTIME/./}"; }   # microseconds
log() { printf 'soak: [%3ds] %s\n' "$(( ($(now) - T0) / 1000000 ))" "$*"; }
T0=$(now)

# Free loopback ports below the ephemeral range (see scripts/free-ports.py).
read -r LB_PORT LB_ADMIN PX_PORT PX_ADMIN UP1 UP2 UP3 UP4 < <(python3 scripts/free-ports.py 8)
LB=127.0.0.1:$LB_PORT
LB_ADM=127.0.0.1:$LB_ADMIN
PX=127.0.0.1:$PX_PORT
PX_ADM=127.0.0.1:$PX_ADMIN
UPS=("$UP1" "$UP2" "$UP3" "$UP4")
MAX_CONN=300
MAX_LINE=4096

# --- configurations --------------------------------------------------------------------
# Two valid variants of the simulated daemon's file, swapped by the SIGHUP storms. They
# differ in everything a reload applies at once (strategy, routing, thresholds, weights,
# service time, reservations, queue depth of new machines) and agree on the limits the
# clients rely on (max_connections, max_line_bytes, line_timeout 2 s, idle_timeout 20 s).
sim_config() { # VARIANT(a|b)
    local strategy=least-connections routing=request up=50.0 down=20.0 after=500ms
    local small=1 medium=5 large=10 ms=1 cmax=5.0 depth=256
    if [ "$1" = b ]; then
        strategy=power-of-two routing=connection up=60.0 down=25.0 after=2s
        small=2 medium=4 large=8 ms=0.5 cmax=8.0 depth=32
    fi
    cat <<TOML
# soak variant $1 (scripts/soak.sh)
[listener]
address = "$LB"
max_connections = $MAX_CONN
max_line_bytes = $MAX_LINE
idle_timeout = "20s"
line_timeout = "2s"
[admin]
address = "$LB_ADM"
[dispatcher]
strategy = "$strategy"
routing = "$routing"
[load]
connection_min = 1.0
connection_max = $cmax
[load.requests]
small = $small
medium = $medium
large = $large
service_ms_per_unit = $ms
[machines]
queue_depth = $depth
[autoscaler]
scale_up_threshold = $up
scale_down_threshold = $down
scale_down_after = "$after"
[shutdown]
grace = "5s"
TOML
}
sim_config a >"$work/sim-a.toml"
sim_config b >"$work/sim-b.toml"
# The deliberate broken reload: an unknown key, rejected with exactly one ERROR line.
{ sim_config a; echo 'grace_period = "5s"'; } >"$work/sim-broken.toml"  # unknown key in [shutdown]
cp "$work/sim-a.toml" "$work/sim.toml"
"$BIN" check --config "$work/sim-a.toml" >/dev/null
"$BIN" check --config "$work/sim-b.toml" >/dev/null
if "$BIN" check --config "$work/sim-broken.toml" >/dev/null 2>&1; then
    echo "error: the broken variant is accepted" >&2; exit 1
fi

cat >"$work/proxy.toml" <<TOML
# soak proxy-mode daemon (scripts/soak.sh)
[listener]
address = "$PX"
max_connections = $MAX_CONN
idle_timeout = "20s"
[admin]
address = "$PX_ADM"
[load]
connection_min = 5.0
connection_max = 15.0
[autoscaler]
initial = ["medium"]
scale_down_after = "1s"
[shutdown]
grace = "5s"
[backend]
mode = "proxy"
health_check_interval = "500ms"
TOML
for port in "${UPS[@]}"; do
    printf '[[backend.upstreams]]\naddress = "127.0.0.1:%s"\nsize = "medium"\n' "$port" >>"$work/proxy.toml"
done
[ "$PROXY" = 1 ] && "$BIN" check --config "$work/proxy.toml" >/dev/null

wait_port() { # ADDR
    local host=${1%:*} port=${1##*:}
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "error: nothing listens on $1" >&2
    exit 1
}

start_upstream() { # INDEX
    python3 "$SOAK/echo_upstream.py" --port "${UPS[$1]}" 2>>"$work/upstream-$1.err" &
    UP_PIDS[$1]=$!
    UP_STOPPED[$1]=0
}

# --- start -----------------------------------------------------------------------------
RUST_LOG=info "$BIN" --config "$work/sim.toml" --log-format json 2>"$work/sim.log" &
LB_PID=$!
pids+=("$LB_PID")
wait_port "$LB"
wait_port "$LB_ADM"
if [ "$PROXY" = 1 ]; then
    for i in 0 1 2 3; do start_upstream "$i"; done
    for port in "${UPS[@]}"; do wait_port "127.0.0.1:$port"; done
    RUST_LOG=info "$BIN" --config "$work/proxy.toml" --log-format json 2>"$work/proxy.log" &
    PX_PID=$!
    pids+=("$PX_PID")
    wait_port "$PX"
    wait_port "$PX_ADM"
fi
log "${TOTAL}s of load (warm-up ${WARM}s, main ${MAIN}s); daemon pid $LB_PID on $LB$([ "$PROXY" = 1 ] && echo ", proxy daemon pid $PX_PID on $PX"); work directory $work"

# --- faults ------------------------------------------------------------------------------
STORMS=0
HUPS=0
BROKEN=0
# A SIGHUP storm: 5 reloads 50 ms apart, the file swapped (atomically) before each.
hup_storm() {
    local v
    for i in 1 2 3 4 5; do
        v=a; [ $(( (STORMS + i) % 2 )) = 0 ] && v=b
        cp "$work/sim-$v.toml" "$work/sim.toml.new"
        mv -f "$work/sim.toml.new" "$work/sim.toml"
        kill -HUP "$LB_PID" 2>/dev/null || true
        HUPS=$((HUPS + 1))
        sleep 0.05
    done
    STORMS=$((STORMS + 1))
}
# Back to variant a (every phase ends on it, so both RSS measurements see the same config).
settle_config() {
    cp "$work/sim-a.toml" "$work/sim.toml.new"
    mv -f "$work/sim.toml.new" "$work/sim.toml"
    kill -HUP "$LB_PID" 2>/dev/null || true
    HUPS=$((HUPS + 1))
}
errors_logged() { grep -c '"level":"ERROR"' "$work/sim.log" || true; }
# One reload with a broken file: wait (bounded) for its ERROR line, then restore the file.
broken_reload() {
    local before
    before=$(errors_logged)
    sleep 0.3 # let the storm's last reload finish first
    cp "$work/sim-broken.toml" "$work/sim.toml.new"
    mv -f "$work/sim.toml.new" "$work/sim.toml"
    kill -HUP "$LB_PID" 2>/dev/null || true
    BROKEN=$((BROKEN + 1))
    for _ in $(seq 50); do
        [ "$(errors_logged)" -gt "$before" ] && break
        sleep 0.1
    done
    settle_config
}
# Proxy faults, one step every 2 s, rotating over the upstreams: kill -9 one, restart it;
# SIGSTOP the next one, SIGCONT it.
PF_STEP=0
proxy_fault() {
    local i=$(( (PF_STEP / 4) % 4 )) j=$(( (PF_STEP / 4 + 1) % 4 ))
    case $(( PF_STEP % 4 )) in
    0) kill -KILL "${UP_PIDS[$i]}" 2>/dev/null || true
       wait "${UP_PIDS[$i]}" 2>/dev/null || true ;;
    1) start_upstream "$i" ;;
    2) kill -STOP "${UP_PIDS[$j]}" 2>/dev/null || true; UP_STOPPED[$j]=1 ;;
    3) kill -CONT "${UP_PIDS[$j]}" 2>/dev/null || true; UP_STOPPED[$j]=0 ;;
    esac
    PF_STEP=$((PF_STEP + 1))
}
# Every upstream running and not stopped (the end of a phase).
heal_upstreams() {
    for i in 0 1 2 3; do
        if ! kill -0 "${UP_PIDS[$i]}" 2>/dev/null; then
            start_upstream "$i"
        elif [ "${UP_STOPPED[$i]}" = 1 ]; then
            kill -CONT "${UP_PIDS[$i]}" 2>/dev/null || true; UP_STOPPED[$i]=0
        fi
    done
    PF_STEP=$(( (PF_STEP / 4 + 1) * 4 ))
}

# --- one phase of load and faults ----------------------------------------------------------
phase() { # NAME SECONDS
    local name=$1 secs=$2 phase_pids=() pid
    run() { # OUT-NAME CMD...: in the background, stdout to OUT-NAME
        local out=$1; shift
        "$@" >"$work/$name-$out" 2>"$work/$name-$out.err" &
        phase_pids+=("$!"); pids+=("$!")
    }
    run load1.json "$BIN" load --target "$LB" --connections 12 --duration "${secs}s" --json \
        --mix small=70,medium=20,large=10
    run load2.json "$BIN" load --target "$LB" --connections 4 --duration "${secs}s" --json \
        --mix small=10,medium=30,large=60
    run load3.json "$BIN" load --target "$LB" --connections 6 --duration "${secs}s" --json \
        --mix small=50,medium=50 --rate 400/s
    local c=(--addr "$LB" --seconds "$secs")
    run pipe1.out python3 "$SOAK/pipeliner.py" "${c[@]}" --out "$work/$name-pipe1.json" --lines 8192 --hold 7
    run pipe2.out python3 "$SOAK/pipeliner.py" "${c[@]}" --out "$work/$name-pipe2.json" --lines 1024 --hold 1
    run slow.out python3 "$SOAK/slowloris.py" "${c[@]}" --out "$work/$name-slow.json" --conns 20
    run bad.out python3 "$SOAK/badlines.py" "${c[@]}" --out "$work/$name-bad.json" --max-line "$MAX_LINE"
    run admin.out python3 "$SOAK/admin.py" switch --addr "$LB_ADM" --seconds "$secs" \
        --out "$work/$name-admin.json" --period 0.3
    # The flood starts a little later, once the load generators hold their connections.
    run flood.out python3 "$SOAK/flood.py" --addr "$LB" --seconds "$((secs - 2))" \
        --out "$work/$name-flood.json" --conns $((MAX_CONN + 50)) --hold 1.5 --pause 3
    if [ "$PROXY" = 1 ]; then
        run proxy.out python3 "$SOAK/proxy_client.py" --addr "$PX" --seconds "$secs" \
            --out "$work/$name-proxy.json" --conns 8
    fi
    # Faults, in this shell (it owns the upstreams' pids): a tick every 0.5 s.
    local start end tick=0
    start=$(now)
    end=$((start + secs * 1000000))
    while [ "$(now)" -lt "$end" ]; do
        [ $((tick % 6)) = 1 ] && hup_storm
        [ "$tick" = $((secs)) ] && broken_reload   # once, half-way
        [ "$PROXY" = 1 ] && [ $((tick % 4)) = 2 ] && proxy_fault
        tick=$((tick + 1))
        sleep 0.5
    done
    settle_config
    [ "$PROXY" = 1 ] && heal_upstreams
    # Every client stops by itself shortly after the phase (replies still owed are read);
    # bounded: 90 s more at most, then the phase fails.
    local deadline=$(( $(now) + 90 * 1000000 )) alive
    while :; do
        alive=0
        for pid in "${phase_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        if [ "$(now)" -gt "$deadline" ]; then
            log "$name: clients still running 90 s after the phase; stopping them"
            for pid in "${phase_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
            echo "clients overran" >"$work/$name-overran"
            break
        fi
        sleep 0.2
    done
    for pid in "${phase_pids[@]}"; do wait "$pid" 2>/dev/null || echo "$pid" >>"$work/$name-client-failed"; done
    log "$name: load over ($STORMS SIGHUP storms, $BROKEN broken reloads so far)"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# After a phase: wait until the daemon holds nothing (connections, used, queues) and its
# machines are back to min_machines (bounded), then let it sit 2 s and read its RSS (the
# median of three readings 0.5 s apart).
settle() { # NAME PID ADMIN-ADDR TAG
    local name=$1 pid=$2 adm=$3 tag=$4 r1 r2 r3
    python3 "$SOAK/admin.py" quiet --addr "$adm" --timeout 30 \
        --out "$work/quiet-$tag-$name.json" || true
    sleep 2
    r1=$(rss_kib "$pid"); sleep 0.5; r2=$(rss_kib "$pid"); sleep 0.5; r3=$(rss_kib "$pid")
    printf '%s\n' "$r1" "$r2" "$r3" | sort -n | sed -n 2p >"$work/rss-$tag-$name"
    log "$name: $tag daemon idle, RSS $(cat "$work/rss-$tag-$name") KiB"
}

# --- run ----------------------------------------------------------------------------------
# Why RSS is compared between two idle moments: under load RSS follows whatever is open at
# the instant it is read (connections, queued requests, buffers in flight), which varies by
# megabytes from one second to the next. Idle, it is what the process keeps: the code pages
# it has touched, the allocator's retained pages, and anything leaked. The allocator's part
# grows with the highest peak of concurrent work it has served (glibc keeps freed pages in
# its per-thread arenas), and the peaks of this load (a flood while the pipeliners are
# pushed back and the machine count is high) take about a minute to all have happened:
# measured idle after 15 s or 30 s of warm-up, RSS then grew by 9-16 % over the next one to
# four minutes; measured after about a minute, by 0.6-6.5 % over the next four, while the
# heap actually in use (gdb, malloc_stats) grew by ~200 KiB and flattened out. Hence a 60-s warm-up with the very same load and
# faults; after it, a main phase that leaves RSS more than 10 % off the settled level is
# holding memory per connection, request, reload or machine that it should have given back.
phase warmup "$WARM"
settle warmup "$LB_PID" "$LB_ADM" sim
[ "$PROXY" = 1 ] && settle warmup "$PX_PID" "$PX_ADM" proxy
phase main "$MAIN"
settle main "$LB_PID" "$LB_ADM" sim
[ "$PROXY" = 1 ] && settle main "$PX_PID" "$PX_ADM" proxy

# (7) graceful shutdown: SIGTERM, exit status 0 within grace (5 s) and a margin.
stop_daemon() { # PID TAG
    local rc=timeout
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 150); do
        if ! kill -0 "$1" 2>/dev/null; then
            rc=0; wait "$1" || rc=$?
            break
        fi
        sleep 0.1
    done
    echo "$rc" >"$work/exit-$2"
}
stop_daemon "$LB_PID" sim
[ "$PROXY" = 1 ] && stop_daemon "$PX_PID" proxy

cat >"$work/facts.json" <<JSON
{"proxy": $PROXY, "storms": $STORMS, "hups": $HUPS, "broken_reloads": $BROKEN,
 "seconds": {"total": $TOTAL, "warmup": $WARM, "main": $MAIN}}
JSON
set +e
python3 "$SOAK/report.py" "$work"
RESULT=$?
set -e
exit "$RESULT"
