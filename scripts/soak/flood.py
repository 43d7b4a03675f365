"""Connection flood: opens --conns connections at once (more than `listener.max_connections`),
so that the daemon refuses the surplus with `ERR overloaded` (or, past 256 refusals being
written at once, closes them without a line). The admitted ones answer PING with PONG, are
held --hold seconds, then closed; then a pause and the next round, for --seconds.

No request line is ever sent (PING is a command): a flood adds nothing to the request
totals, only to connections_admitted / connections_rejected.

usage: flood.py --addr 127.0.0.1:PORT --seconds S --out FILE [--conns 350] [--hold 1.5] [--pause 3]
"""

import select
import time

from soaklib import STEP, LineConn, Summary, Timeout, args, connect

opts = args(["conns", "hold", "pause"])
end = time.monotonic() + float(opts["seconds"])
conns = int(opts["conns"] or 350)
hold = float(opts["hold"] or 1.5)
pause = float(opts["pause"] or 3)
summary = Summary("flood")


def first_line(conn, deadline):
    try:
        return conn.readline(deadline)
    except Timeout:
        return b"(no answer)"


def round_():
    opened = []
    for _ in range(conns):
        try:
            opened.append(LineConn(connect(opts["addr"])))
        except OSError as e:
            summary.refuse("connect:" + type(e).__name__)
    # Refusals come at once, unasked: give them a moment to arrive.
    time.sleep(0.3)
    admitted = []
    for conn in opened:
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if not readable:
            try:
                conn.send(b"PING\n")
            except OSError:
                pass  # refused and closed meanwhile: the read below tells
        line = first_line(conn, time.monotonic() + STEP)
        if line == b"PONG":
            admitted.append(conn)
            continue
        if line is None:
            summary.refuse("closed-without-line")
        elif line.startswith(b"ERR "):
            summary.refuse(line.split(b" ", 2)[1].decode("ascii", "replace"))
        else:
            summary.problem("flood connection got %r" % line[:80])
        conn.close()
    summary.add("admitted", len(admitted))
    summary.add("rounds")
    time.sleep(hold)
    for conn in admitted:
        # Nothing is owed (PONG was read): a plain close.
        conn.close()


while time.monotonic() < end:
    round_()
    time.sleep(max(0.0, min(pause, end - time.monotonic())))
summary.write(opts["out"])
