"""Never-reading pipeliner: writes --lines requests with 1 KiB payloads and reads nothing
for --hold seconds, then reads every reply while writing the rest, checks that the replies
come in request order and echo their payloads, half-closes and reads to the end.

Its socket buffers are fixed small (16 KiB), so the daemon's back-pressure shows: the
daemon stops reading at its per-connection cap (16 KiB owed) and, once its own send
buffer is full (a few MiB: 8,192 lines do it), stays stopped until we read. A hold longer
than `listener.line_timeout` checks that this pause is not blamed on us (it was, before
the fix in src/server/session/line.rs: `ERR timeout line not completed`, requests lost).

Sends a bounded amount per connection (lines x ~1 KiB) and reads everything at the end,
so every request it sent is answered (see soaklib). Loops over sessions for --seconds.

usage: pipeliner.py --addr 127.0.0.1:PORT --seconds S --out FILE [--lines 1024] [--hold 3]
"""

import os
import select
import time

from soaklib import STEP, Summary, Timeout, admitted, args

opts = args(["lines", "hold"])
lines_per_session = int(opts["lines"] or 1024)
hold = float(opts["hold"] or 3)
end = time.monotonic() + float(opts["seconds"])
summary = Summary("pipeliner")


def payload(session, i):
    """A 1 KiB payload naming its position, so an out-of-order reply is caught."""
    head = b"p%d-%d-%06d-" % (os.getpid(), session, i)
    return head + b"x" * (1024 - len(head))


def session(number):
    conn = admitted(opts["addr"], summary, end, bufsize=16384)
    if conn is None:
        return
    sock = conn.sock
    # Mostly SMALL, every 16th MEDIUM: a few milliseconds of service each.
    classes = [b"MEDIUM" if i % 16 == 0 else b"SMALL" for i in range(lines_per_session)]
    payloads = [payload(number, i) for i in range(lines_per_session)]
    data = b"".join(c + b" " + p + b"\n" for c, p in zip(classes, payloads))
    line_ends = []  # offset just past each line, to count what was fully written
    pos = 0
    for c, p in zip(classes, payloads):
        pos += len(c) + 1 + len(p) + 1
        line_ends.append(pos)
    written = 0
    write_failed = False
    sock.setblocking(False)

    def write_some():
        nonlocal written, write_failed
        try:
            written += sock.send(data[written:written + 65536])
        except (BlockingIOError, InterruptedError):
            pass
        except (BrokenPipeError, ConnectionResetError):
            write_failed = True  # stop writing; the read side tells what happened

    # Phase 1: write without reading. The daemon answers what it reads until the replies
    # it owes reach its cap; then it stops reading and our sends block (EAGAIN).
    hold_end = time.monotonic() + hold
    stalled = False
    while time.monotonic() < hold_end:
        if written >= len(data) or write_failed:
            time.sleep(max(0.0, min(0.1, hold_end - time.monotonic())))
            continue
        _, w, _ = select.select([], [sock], [], 0.1)
        if w:
            write_some()
        else:
            stalled = True
    if stalled:
        summary.add("sessions_pushed_back")  # the daemon stopped reading from us for a while

    # Phase 2: read every reply (in order) while writing the rest.
    got = 0
    buf = b""
    eof = False
    hard_end = time.monotonic() + 60  # 1,024 replies take well under a second normally
    while got < lines_per_session and not eof and time.monotonic() < hard_end:
        want_write = [sock] if written < len(data) and not write_failed else []
        r, w, _ = select.select([sock], want_write, [], 0.5)
        if w:
            write_some()
        if r:
            try:
                chunk = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                eof = True
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                summary.reply(line)
                i = got
                got += 1
                if line.startswith(b"OK "):
                    want = b" " + classes[i].lower() + b" " + payloads[i]
                    if not line.endswith(want):
                        summary.problem("reply %d out of order or wrong: %r" % (i, line[:60]))
                elif not line.startswith(b"ERR busy"):
                    summary.problem("reply %d: %r" % (i, line[:100]))
    sent = sum(1 for e in line_ends if e <= written)
    summary.sent += min(sent, lines_per_session)
    if got < lines_per_session:
        summary.gave_up += max(0, sent - got)
        summary.problem("session ended after %d of %d replies (eof=%s)" % (got, lines_per_session, eof))
        conn.close()
        return
    # Everything answered: half-close and read to the server's close (nothing more is owed).
    sock.setblocking(True)
    try:
        rest = conn.finish(time.monotonic() + STEP)
    except Timeout:
        rest = []
        summary.problem("no close after the half-close")
    for line in rest:
        summary.problem("reply after the last one: %r" % line[:60])
    conn.close()
    summary.add("sessions")


number = 0
while time.monotonic() < end:
    number += 1
    session(number)
summary.write(opts["out"])
