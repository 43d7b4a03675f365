"""Admin-endpoint helper of the soak (HTTP on loopback, standard library only).

  admin.py switch --addr ADMIN --seconds S --out FILE [--period 0.3]
      Strategy switches through `PUT /api/strategy`, cycling through all seven strategies
      in shuffled rounds; each must answer 200 with the strategy asked for. Between
      switches it reads `/api/stats` and checks that the request totals never go down.
  admin.py quiet --addr ADMIN --timeout T --out FILE
      Waits (bounded) until no connection is open and every machine's `used`,
      `connections` and `queued` are 0, then until the machines are back at min_machines;
      writes the /api/stats answer that showed the idle state (or the last one) to FILE,
      with the seconds it took. Exit status 0 when the idle state was reached, 1 otherwise.
  admin.py stats --addr ADMIN
      Prints one /api/stats answer.
"""

import http.client
import json
import random
import sys
import time

from soaklib import Summary, args

STRATEGIES = ["round-robin", "random", "least-connections", "least-load",
              "power-of-two", "consistent-hash", "first"]


def request(addr, method, path, body=None):
    host, port = addr.rsplit(":", 1)
    assert host == "127.0.0.1", "the soak talks to loopback only"
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stats(addr):
    status, body = request(addr, "GET", "/api/stats")
    if status != 200:
        raise RuntimeError("GET /api/stats answered %d" % status)
    return json.loads(body)


def idle(s):
    """Whether the daemon holds nothing: no connection open, every machine empty."""
    return s["totals"]["connections_open"] == 0 and all(
        abs(m["used"]) < 1e-9 and m["connections"] == 0 and m["queued"] == 0
        for m in s["machines"])


def switch(opts):
    end = time.monotonic() + float(opts["seconds"])
    period = float(opts["period"] or 0.3)
    summary = Summary("admin")
    last_total = 0
    order = []
    while time.monotonic() < end:
        if not order:
            order = STRATEGIES[:]
            random.shuffle(order)
        name = order.pop()
        try:
            status, body = request(opts["addr"], "PUT", "/api/strategy",
                                   json.dumps({"strategy": name}))
            if status != 200 or json.loads(body).get("strategy") != name:
                summary.problem("PUT /api/strategy %s: %d %r" % (name, status, body[:100]))
            else:
                summary.add("switch:" + name)
            s = stats(opts["addr"])
            total = s["totals"]["requests_ok"] + s["totals"]["requests_failed"]
            if total < last_total:
                summary.problem("request totals went down: %d -> %d" % (last_total, total))
            last_total = total
            summary.add("stats_reads")
        except (OSError, ValueError, RuntimeError) as e:
            summary.problem("admin: %r" % e)
        time.sleep(period)
    summary.write(opts["out"])


def quiet(opts):
    """Waits for the daemon to hold nothing, then (same bound) for its machines to be back
    at min_machines: the RSS reading that follows should not depend on how many machines
    the autoscaler happened to keep."""
    started = time.monotonic()
    end = started + float(opts["timeout"] or 30)
    s = None
    idle_after = None
    while time.monotonic() < end:
        try:
            s = stats(opts["addr"])
        except (OSError, ValueError, RuntimeError):
            time.sleep(0.2)
            continue
        if idle_after is None and idle(s):
            idle_after = round(time.monotonic() - started, 2)
            idle_stats = s
        if idle_after is not None and len(s["machines"]) <= s["autoscaler"]["min_machines"]:
            break
        time.sleep(0.2)
    with open(opts["out"], "w") as f:
        json.dump({"idle": idle_after is not None,
                   "idle_after_s": idle_after,
                   "stats": idle_stats if idle_after is not None else s,
                   "machines_at_end": len(s["machines"]) if s else None,
                   "seconds": round(time.monotonic() - started, 2)}, f)
    sys.exit(0 if idle_after is not None else 1)


if __name__ == "__main__":
    command = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if command == "switch":
        switch(args(["period"]))
    elif command == "quiet":
        quiet(args(["timeout"]))
    elif command == "stats":
        print(json.dumps(stats(args()["addr"])))
    else:
        sys.exit(__doc__)
