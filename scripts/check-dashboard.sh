#!/usr/bin/env bash
# Checks the admin dashboard (GET /) in a real browser.
#
# Builds elastic-lb (debug), starts it on free ports with a temporary configuration, opens
# client connections until more than one machine runs, loads the dashboard in headless
# Chromium, dumps the DOM after its JavaScript ran, and asserts that it shows one
# `machine-bar` element per machine of /api/stats (and at least two).
#
# Usage: scripts/check-dashboard.sh [--screenshot PATH]
#   --screenshot PATH   also save a 1280x900 screenshot of the dashboard to PATH
#
# Needs curl and Debian's `chromium`; when they are missing and the script runs as root
# (or CI=true), it installs them with apt-get. Exits non-zero on any failure; the daemon is
# always stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

screenshot=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --screenshot) screenshot="${2:?--screenshot needs a path}"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "check-dashboard: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "== check-dashboard: $*"; }
fail() { echo "check-dashboard: FAIL: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [[ ${#need[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 || "${CI:-}" == "true" ]]; then
        say "installing ${need[*]}"
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    else
        fail "missing ${need[*]} (install with: sudo apt-get install -y ${need[*]})"
    fi
fi

# --- build -------------------------------------------------------------------------------
say "building (debug)"
cargo build --quiet --bin elastic-lb
bin="${CARGO_TARGET_DIR:-target}/debug/elastic-lb"
[[ -x "$bin" ]] || fail "no binary at $bin"

# --- daemon ------------------------------------------------------------------------------
work="$(mktemp -d)"
daemon_pid=""
cleanup() {
    local status=$?
    for pid in "${helpers[@]:-}"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    # Close the client connections first so the daemon has nothing to drain.
    for fd in "${fds[@]:-}"; do
        [[ -n "$fd" ]] && exec {fd}>&- 2>/dev/null || true
    done
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -s "$work/daemon.log" ]]; then
        echo "--- daemon log (last 20 lines)" >&2
        tail -n 20 "$work/daemon.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
fds=()
helpers=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on (a connect is refused), below Linux's ephemeral range
# (32768-60999) so that no outgoing connection holds it as its source port. Racy by nature:
# the start-up below picks new ports when the daemon finds one taken.
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}
# Up to three tries: a port can be taken between the check and the daemon's bind.
for attempt in 1 2 3; do
lb_port="$(free_port)" || fail "no free port"
admin_port="$(free_port)" || fail "no free port"
while [[ "$admin_port" == "$lb_port" ]]; do admin_port="$(free_port)"; done

# Machines of two sizes; reservations of 8-22 units, so a dozen connections need several
# machines to stay under the 50 % scale-up threshold. Scale-down is slow so they stay.
cat >"$work/config.toml" <<EOF
[listener]
address = "127.0.0.1:$lb_port"
[admin]
address = "127.0.0.1:$admin_port"
[dispatcher]
strategy = "least-load"
seed = 7
[load]
connection_min = 8.0
connection_max = 22.0
[autoscaler]
initial = ["medium", "small"]
scale_down_after = "120s"
EOF

say "starting the daemon (balancer :$lb_port, admin :$admin_port)"
"$bin" run --config "$work/config.toml" --log-format json 2>"$work/daemon.log" &
daemon_pid=$!
admin="http://127.0.0.1:$admin_port"
for _ in $(seq 100); do
    curl -fsS -o /dev/null "$admin/api/stats" 2>/dev/null && break
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$daemon_pid" 2>/dev/null && break
wait "$daemon_pid" 2>/dev/null || true
if [[ "$attempt" -lt 3 ]] && grep -q "Address already in use" "$work/daemon.log"; then
    say "a port was taken meanwhile; trying other ports"
    continue
fi
fail "the daemon exited during start-up"
done
curl -fsS -o /dev/null "$admin/api/stats" || fail "the admin endpoint does not answer"

# --- load --------------------------------------------------------------------------------
say "opening client connections"
for i in $(seq 14); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$lb_port" || fail "cannot connect to the balancer"
    fds+=("$fd")
    # A few requests per connection, so the totals are not all zero.
    printf 'PING\nMEDIUM hello %s\nLARGE report\nsmall work\n' "$i" >&"$fd"
    for _ in 1 2 3 4; do
        read -r -t 5 -u "$fd" reply || fail "no reply on connection $i"
    done
    [[ "$reply" == OK* ]] || fail "unexpected reply on connection $i: $reply"
done

stats="$(curl -fsS "$admin/api/stats")" || fail "GET /api/stats failed"
machines="$(grep -o '"state":"\(active\|draining\)"' <<<"$stats" | wc -l)"
say "/api/stats lists $machines machines"
[[ "$machines" -ge 2 ]] || fail "expected at least 2 machines, got $machines: $stats"

# --- browser -----------------------------------------------------------------------------
chrome() {
    timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-dev-shm-usage --user-data-dir="$(mktemp -d -p "$work")" \
        --virtual-time-budget=3000 "$@" 2>>"$work/chromium.log"
}

say "loading $admin/ in headless Chromium"
chrome --dump-dom "$admin/" >"$work/dom.html" || {
    tail -n 20 "$work/chromium.log" >&2
    fail "chromium failed"
}
bars="$(grep -o '<div class="[^"]*\bmachine-bar\b[^"]*"' "$work/dom.html" | wc -l)"
say "the dashboard shows $bars machine bars"
[[ "$bars" -eq "$machines" ]] || fail "expected $machines machine-bar elements, found $bars"
grep -q 'id="status"[^>]*class="pill live"\|class="pill live"' "$work/dom.html" \
    || fail "the dashboard did not report itself live"
for m in $(grep -o '"name":"m[0-9]*"' <<<"$stats" | cut -d'"' -f4); do
    grep -q "data-machine=\"$m\"" "$work/dom.html" || fail "no bar for machine $m"
done

if [[ -n "$screenshot" ]]; then
    # Some live traffic for the picture: two connections keep a few requests in flight.
    for fd in "${fds[@]:0:2}"; do
        (while :; do printf 'SMALL a\nMEDIUM b\n'; sleep 0.05; done) >&"$fd" 2>/dev/null &
        helpers+=("$!")
        cat <&"$fd" >/dev/null 2>&1 &
        helpers+=("$!")
    done
    sleep 1
    mkdir -p "$(dirname "$screenshot")"
    chrome --hide-scrollbars --window-size=1280,900 --screenshot="$(realpath -m "$screenshot")" "$admin/" \
        || fail "screenshot failed"
    [[ -s "$screenshot" ]] || fail "no screenshot written to $screenshot"
    say "screenshot saved to $screenshot"
fi

say "OK"
