#!/bin/sh
# elastic-lb provider (backend.provider) that starts and stops local upstream processes.
#
#   provider-local.sh acquire SIZE     start a TCP echo server on a free 127.0.0.1 port,
#                                      print "127.0.0.1:PORT"
#   provider-local.sh release ADDRESS  stop the server started for ADDRESS
#   provider-local.sh list             print the addresses of the servers still running
#
# State (one ADDRESS.pid file per server) lives in $ELB_PROVIDER_STATE, default
# ${TMPDIR:-/tmp}/elastic-lb-provider-local. Each server is a small python3 program, started
# with nohup in the background, its output sent to ADDRESS.log in the state directory (the
# balancer reads this script's stdout to its end, so the server must not keep it open).
#
# Set ELB_PROVIDER_MODE=http to start `python3 -m http.server` instead of the echo server.
# The same two verbs drive anything that can create an upstream and print its address:
# see "Capacity on demand" in docs/reference.md (docker, kubectl, a cloud CLI).
set -eu

state="${ELB_PROVIDER_STATE:-${TMPDIR:-/tmp}/elastic-lb-provider-local}"
mkdir -p "$state"

die() {
    echo "provider-local: $*" >&2
    exit 1
}

# A TCP echo server on 127.0.0.1:0 (or an HTTP server) that writes the port it got to $1.
ECHO_SERVER='
import os, socket, socketserver, sys, http.server
port_file, mode = sys.argv[1], sys.argv[2]
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
handler = http.server.SimpleHTTPRequestHandler if mode == "http" else Echo
with Server(("127.0.0.1", 0), handler) as server:
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, port_file)
    server.serve_forever()
'

acquire() {
    size="${1:-medium}"
    port_file="$state/starting.$$"
    rm -f "$port_file"
    nohup python3 -c "$ECHO_SERVER" "$port_file" "${ELB_PROVIDER_MODE:-echo}" \
        >"$state/starting.$$.log" 2>&1 </dev/null &
    pid=$!
    # Wait (bounded: 10 s) until the server has bound its port.
    i=0
    while [ ! -s "$port_file" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$state/starting.$$.log" >&2 || true
            rm -f "$state/starting.$$.log"
            die "the server exited before listening"
        fi
        i=$((i + 1))
        [ "$i" -le 200 ] || { kill "$pid" 2>/dev/null || true; die "the server did not start within 10 s"; }
        sleep 0.05
    done
    port=$(cat "$port_file")
    rm -f "$port_file"
    address="127.0.0.1:$port"
    echo "$pid" >"$state/$address.pid"
    mv "$state/starting.$$.log" "$state/$address.log"
    echo "provider-local: started $address (size $size, pid $pid)" >&2
    echo "$address"
}

release() {
    address="${1:?usage: provider-local.sh release ADDRESS}"
    pid_file="$state/$address.pid"
    [ -f "$pid_file" ] || die "no server for $address"
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    # Wait (bounded: 5 s) for it to exit, then insist.
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    rm -f "$pid_file" "$state/$address.log"
    echo "provider-local: stopped $address (pid $pid)" >&2
}

list() {
    for f in "$state"/*.pid; do
        [ -e "$f" ] || continue
        basename "$f" .pid
    done
}

case "${1:-}" in
acquire) acquire "${2:-medium}" ;;
release) release "${2:-}" ;;
list) list ;;
*) die "usage: provider-local.sh acquire SIZE | release ADDRESS | list" ;;
esac
