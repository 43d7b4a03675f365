#!/usr/bin/env python3
"""free-ports.py N: prints N distinct loopback ports that are free now.

They are drawn from 20000-31999, below Linux's ephemeral range (32768-60999), so no
outgoing connection can take one as its source port between this check and the bind of
the server that will use it. Another program may still bind one in between; callers then
fail to start and say so.
"""
import random
import socket
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ports = []
while len(ports) < n:
    port = random.randrange(20000, 32000)
    if port in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    ports.append(port)
print(*ports)
