"""Shared helpers of the soak clients (scripts/soak.sh): a line connection with deadlines,
admission with retry, the per-process summary every client writes at exit, and the
one-summary-per-thread run of the threaded clients.

Accounting rule shared by every client (check (1) of the soak): a *request* is a line the
daemon counts as one (a work line, an unreadable line, a too-long line, a line cut by
`listener.line_timeout`); commands (PING, QUIT) and empty lines are not. A client counts
a request as `sent` when it has written it and as `answered` when it has read its reply.
Every client ends each connection by reading until the server closes it, so a request it
sent is always answered; anything else is recorded as `gave_up` and fails the check.
Connections are only used after `PING` got `PONG` (the daemon admitted them): a refused
connection (`ERR overloaded`/`ERR exhausted`) never reads a request line, so nothing sent
before the refusal is counted by either side.
"""

import json
import os
import random
import socket
import sys
import threading
import time

# Every blocking step is bounded by a deadline; this is the longest single wait.
STEP = 10.0


class Timeout(Exception):
    """A read did not complete before its deadline."""


class Summary:
    """What one client process saw; written as JSON to --out at exit."""

    def __init__(self, kind):
        self.kind = kind
        self.sent = 0          # request lines written
        self.answered = 0      # replies read for them
        self.ok = 0            # of which OK ...
        self.errors = {}       # of which ERR <code> ..., by code
        self.refused = {}      # connections refused at admission, by code
        self.gave_up = 0       # requests sent that never got a reply (should stay 0)
        self.problems = []     # protocol violations seen (the first 20)
        self.problem_count = 0
        self.extra = {}        # client-specific counters

    def reply(self, line):
        """Counts one reply line (bytes, without the newline) to a request."""
        self.answered += 1
        if line.startswith(b"OK "):
            self.ok += 1
        elif line.startswith(b"ERR "):
            code = line.split(b" ", 2)[1].decode("ascii", "replace")
            self.errors[code] = self.errors.get(code, 0) + 1
        else:
            self.problem("unexpected reply %r" % line[:80])

    def refuse(self, code):
        self.refused[code] = self.refused.get(code, 0) + 1

    def problem(self, text):
        self.problem_count += 1
        if len(self.problems) < 20:
            self.problems.append(text)

    def add(self, key, n=1):
        self.extra[key] = self.extra.get(key, 0) + n

    def merge(self, other):
        """Adds another Summary (e.g. one thread's) into this one."""
        self.sent += other.sent
        self.answered += other.answered
        self.ok += other.ok
        self.gave_up += other.gave_up
        self.problem_count += other.problem_count
        self.problems = (self.problems + other.problems)[:20]
        for mine, theirs in ((self.errors, other.errors), (self.refused, other.refused)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for k, v in other.extra.items():
            if k.startswith("max_"):
                self.extra[k] = max(self.extra.get(k, 0), v)
            else:
                self.extra[k] = self.extra.get(k, 0) + v

    def write(self, path):
        data = {k: v for k, v in self.__dict__.items()}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)


class LineConn:
    """A client socket with a read buffer: lines in, bytes out, every wait bounded."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.reset = False  # the connection ended with a reset, not a clean close

    def send(self, data):
        self.sock.sendall(data)

    def readline(self, deadline):
        """The next line without its newline, or None at EOF; raises Timeout."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line
            if self.eof:
                if self.buf:  # a last line without newline (the daemon never sends one)
                    line, self.buf = self.buf, b""
                    return line
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(min(left, STEP))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.reset = True
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk

    def finish(self, deadline):
        """Half-closes and reads until the server closes: the lines still owed."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        lines = []
        while True:
            line = self.readline(deadline)
            if line is None:
                return lines
            lines.append(line)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect(addr, bufsize=None):
    """A TCP connection to ADDR (loopback only). `bufsize` fixes both socket buffers
    (bytes), so that a client that does not read, or a server that does not, fills them
    quickly instead of the kernel growing them to megabytes."""
    host, port = addr.rsplit(":", 1)
    assert host == "127.0.0.1", "the soak talks to loopback only"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if bufsize:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    sock.settimeout(STEP)
    try:
        sock.connect((host, int(port)))
    except OSError:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def admitted(addr, summary, deadline, bufsize=None):
    """A connection the daemon admitted (it answered PING), or None at the deadline.

    Refusals are counted in `summary.refused` and retried after a short random pause.
    """
    while time.monotonic() < deadline:
        try:
            conn = LineConn(connect(addr, bufsize))
            conn.send(b"PING\n")
            line = conn.readline(time.monotonic() + STEP)
        except (OSError, Timeout) as e:
            summary.refuse("connect:" + type(e).__name__)
            time.sleep(0.2)
            continue
        if line == b"PONG":
            return conn
        conn.close()
        if line is None:
            summary.refuse("closed")  # refused without a line (more than 256 at once)
        elif line.startswith(b"ERR "):
            summary.refuse(line.split(b" ", 2)[1].decode("ascii", "replace"))
        else:
            summary.problem("unexpected answer to PING: %r" % line[:80])
        time.sleep(random.uniform(0.05, 0.25))
    return None


def run_threads(kind, count, worker, out):
    """Runs `worker(summary)` on `count` threads, each with a Summary of its own, waits for
    them all, and writes their merged Summary to `out`."""
    summaries = [Summary(kind) for _ in range(count)]
    threads = [threading.Thread(target=worker, args=(s,)) for s in summaries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Summary(kind)
    for s in summaries:
        total.merge(s)
    total.write(out)


def args(extra=()):
    """--addr ADDR --seconds S --out FILE, plus the client's own `--name value` pairs."""
    opts = {"addr": None, "seconds": "10", "out": None}
    for name in extra:
        opts[name] = None
    argv = sys.argv[1:]
    for i in range(0, len(argv) - 1, 2):
        key = argv[i].lstrip("-").replace("-", "_")
        if key not in opts:
            sys.exit("unknown option %s" % argv[i])
        opts[key] = argv[i + 1]
    return opts
