"""Slowloris: --conns connections, each sending one byte of a line per second and never a
newline. The daemon's `listener.line_timeout` must answer `ERR timeout line not completed
within ...` and close; the cut line counts as one failed request on both sides.

If the daemon never answers (a bug), the client gives up after --give-up seconds by
half-closing: the daemon then answers the partial line as a last line at EOF, so the
request is still answered and counted, and the miss is recorded as a problem.

usage: slowloris.py --addr 127.0.0.1:PORT --seconds S --out FILE [--conns 20] [--give-up 20]
"""

import select
import time

from soaklib import STEP, Timeout, admitted, args, run_threads

opts = args(["conns", "give_up"])
end = time.monotonic() + float(opts["seconds"])
give_up = int(opts["give_up"] or 20)
LINE = b"SMALL slowloris never ends this line "


def session(summary):
    conn = admitted(opts["addr"], summary, end)
    if conn is None:
        return
    started = time.monotonic()
    reply = None
    for i in range(give_up):  # bounded: one byte a second for at most give_up seconds
        try:
            conn.send(LINE[i % len(LINE):i % len(LINE) + 1])
        except OSError:
            pass  # the server closed after its reply; read it below
        readable, _, _ = select.select([conn.sock], [], [], 1.0)
        if readable:
            try:
                reply = conn.readline(time.monotonic() + STEP)
            except Timeout:
                reply = None
            break
    summary.sent += 1
    if reply is None:
        # No answer: half-close; the partial line is then answered at EOF.
        summary.problem("no ERR timeout after %.0f s" % (time.monotonic() - started))
        try:
            rest = conn.finish(time.monotonic() + STEP)
        except Timeout:
            rest = []
        if rest:
            summary.reply(rest[0])
        else:
            summary.gave_up += 1
        conn.close()
        return
    summary.reply(reply)
    if not reply.startswith(b"ERR timeout line not completed"):
        summary.problem("slowloris got %r" % reply[:80])
    waited = round(time.monotonic() - started, 2)
    summary.extra["max_s_to_timeout"] = max(summary.extra.get("max_s_to_timeout", 0), waited)
    # The server closes after its reply: read to the end (nothing more may come).
    try:
        rest = conn.finish(time.monotonic() + STEP)
    except Timeout:
        rest = [b"(no close within %d s)" % STEP]
    for line in rest:
        summary.problem("after ERR timeout: %r" % line[:80])
    summary.add("sessions")
    conn.close()


def worker(summary):
    while time.monotonic() < end:
        session(summary)


run_threads("slowloris", int(opts["conns"] or 20), worker, opts["out"])
