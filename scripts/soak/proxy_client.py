"""Clients of the proxy-mode daemon: --conns threads, each opening a stream, sending
chunks of 1 B - 8 KiB of random bytes and reading the same bytes back (the upstreams
echo), 5 - 30 exchanges per stream, for --seconds.

A stream may break when the soak kills its upstream: that is expected and counted
(`broken`), but every byte that came back must be exactly what was sent, in order
(`problems` otherwise), and an exchange must not hang longer than --patience seconds
(the soak SIGSTOPs upstreams for 2 s at a time).

usage: proxy_client.py --addr 127.0.0.1:PORT --seconds S --out FILE [--conns 8] [--patience 15]
"""

import os
import random
import socket
import time

from soaklib import args, connect, run_threads

opts = args(["conns", "patience"])
end = time.monotonic() + float(opts["seconds"])
patience = float(opts["patience"] or 15)


def exchange(sock, chunk, summary):
    """Sends `chunk`, reads it back. True when echoed whole; False when the stream broke."""
    try:
        sock.sendall(chunk)
    except OSError:
        summary.add("broken")
        return False
    got = b""
    deadline = time.monotonic() + patience
    while len(got) < len(chunk):
        left = deadline - time.monotonic()
        if left <= 0:
            summary.problem("no echo within %.0f s (%d of %d bytes)" % (patience, len(got), len(chunk)))
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(len(chunk) - len(got))
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            summary.add("broken")  # the stream closed (upstream killed, or refused)
            break
        got += data
    if got != chunk[:len(got)]:
        summary.problem("echo differs from what was sent (%d bytes)" % len(chunk))
        return False
    if len(got) < len(chunk):
        return False
    summary.add("exchanges")
    summary.add("bytes", len(chunk))
    return True


def worker(summary):
    rng = random.Random()
    while time.monotonic() < end:
        try:
            sock = connect(opts["addr"])
        except OSError as e:
            summary.refuse("connect:" + type(e).__name__)
            time.sleep(0.2)
            continue
        summary.add("streams")
        for _ in range(rng.randint(5, 30)):
            if time.monotonic() >= end:
                break
            if not exchange(sock, os.urandom(rng.randint(1, 8192)), summary):
                break
            time.sleep(rng.uniform(0.0, 0.05))
        sock.close()
        time.sleep(rng.uniform(0.0, 0.1))


run_threads("proxy", int(opts["conns"] or 8), worker, opts["out"])
