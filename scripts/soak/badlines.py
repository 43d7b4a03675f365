"""Malformed input, alternating two kinds of session for --seconds:

- invalid UTF-8: a pipeline of 40 lines mixing good requests, lines that are not UTF-8
  (`ERR bad-request`, connection stays open), CRLF endings, whitespace-only lines (no
  reply), commands, then QUIT. Every reply is checked in order.
- too-long: two good requests, then a line longer than --max-line (`max_line_bytes`)
  that goes on for up to 1 MiB, then more lines. The daemon must answer the two requests,
  then `ERR too-long`, and close; what follows is discarded and not counted.

usage: badlines.py --addr 127.0.0.1:PORT --seconds S --out FILE --max-line BYTES
"""

import random
import select
import time

from soaklib import Summary, Timeout, admitted, args

opts = args(["max_line"])
end = time.monotonic() + float(opts["seconds"])
max_line = int(opts["max_line"])
summary = Summary("badlines")
rng = random.Random()


def utf8_session(n):
    conn = admitted(opts["addr"], summary, end)
    if conn is None:
        return
    out = []       # bytes to send
    expect = []    # (prefix, suffix) every reply must start / end with, in order
    requests = 0
    for i in range(40):
        kind = rng.randrange(7)
        tag = b"%d-%d" % (n, i)
        if kind == 0:
            out.append(b"SMALL u" + tag + b"\n")
            expect.append((b"OK ", b" small u" + tag))
            requests += 1
        elif kind == 1:
            out.append(b"\xff\xfe not utf-8 " + tag + b"\n")
            expect.append((b"ERR bad-request", b""))
            requests += 1
        elif kind == 2:
            out.append(b"MEDIUM \xc3\x28 " + tag + b"\n")  # an invalid 2-byte sequence
            expect.append((b"ERR bad-request", b""))
            requests += 1
        elif kind == 3:
            out.append(b"LARGE c" + tag + b"\r\n")
            expect.append((b"OK ", b" large c" + tag))
            requests += 1
        elif kind == 4:
            out.append(b" \t \r\n")  # only whitespace: ignored, not a request
        elif kind == 5:
            out.append(b"ping\n")  # a command: answered, not counted
            expect.append((b"PONG", b""))
        else:
            out.append(b"hello " + tag + b"\n")  # default class (small)
            expect.append((b"OK ", b" small hello " + tag))
            requests += 1
    out.append(b"QUIT\n")
    expect.append((b"BYE", b""))
    lines = []
    try:
        conn.send(b"".join(out))
        deadline = time.monotonic() + 30
        while True:  # QUIT: the daemon answers everything, then BYE, then closes
            line = conn.readline(deadline)
            if line is None:
                break
            lines.append(line)
    except (OSError, Timeout) as e:
        summary.problem("utf8 session: %r" % e)
    summary.sent += requests
    answered = 0
    for i, line in enumerate(lines):
        if i < len(expect):
            prefix, suffix = expect[i]
            busy = prefix == b"OK " and line.startswith(b"ERR busy ")  # a full queue: allowed
            if not busy and not (line.startswith(prefix) and line.endswith(suffix)):
                summary.problem("utf8 reply %d: %r, expected %r...%r" % (i, line[:60], prefix, suffix))
            if prefix in (b"PONG", b"BYE"):
                continue  # a command's reply, not a request's
        summary.reply(line)
        answered += 1
    if len(lines) != len(expect):
        summary.problem("utf8 session: %d replies for %d lines" % (len(lines), len(expect)))
    summary.gave_up += max(0, requests - answered)
    summary.add("utf8_sessions")
    conn.close()


def too_long_session(n):
    conn = admitted(opts["addr"], summary, end)
    if conn is None:
        return
    length = rng.choice([max_line + 1, 64 * 1024, 1024 * 1024])
    head = b"SMALL before-%d-1\nSMALL before-%d-2\n" % (n, n)
    data = head + b"y" * length + b"\nSMALL after-too-long\n"
    sock = conn.sock
    sock.setblocking(False)
    written = 0
    buf = b""
    eof = False
    deadline = time.monotonic() + 30
    # Write (as long as the daemon reads) and read at the same time, until the daemon closes.
    while not eof and time.monotonic() < deadline:
        want_write = [sock] if 0 <= written < len(data) else []
        r, w, _ = select.select([sock], want_write, [], 0.5)
        if w:
            try:
                written += sock.send(data[written:written + 65536])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                written = -1  # the daemon is done with us; keep reading
        if r:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                eof = True
            buf += chunk
    lines = buf.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    summary.sent += 3  # two requests and the too-long line
    want = [b" small before-%d-1" % n, b" small before-%d-2" % n]
    for i, line in enumerate(lines):
        summary.reply(line)
        if i < 2 and not line.startswith(b"ERR busy ") and not (
                line.startswith(b"OK ") and line.endswith(want[i])):
            summary.problem("too-long session reply %d: %r" % (i, line[:60]))
        if i == 2 and not line.startswith(b"ERR too-long"):
            summary.problem("too-long session: %r" % line[:60])
    if len(lines) != 3 or not eof:
        summary.problem("too-long session (%d bytes): %d replies, closed=%s: %r" % (length, len(lines), eof, lines[-1:]))
        summary.gave_up += max(0, 3 - len(lines))
    summary.add("too_long_sessions")
    conn.close()


n = 0
while time.monotonic() < end:
    n += 1
    (utf8_session if n % 2 else too_long_session)(n)
    time.sleep(0.05)
summary.write(opts["out"])
