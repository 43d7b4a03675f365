"""The soak's checks: reads what scripts/soak.sh left in its work directory and prints one
PASS/FAIL line per check, then `soak: N passed, N failed`. Exit status 0 when all passed.

usage: report.py WORKDIR

Files read (written by soak.sh and the clients): facts.json; per phase (warmup, main) the
load generators' JSON (PHASE-load*.json) and the clients' summaries (PHASE-*.json);
quiet-{sim,proxy}-PHASE.json (admin.py quiet); rss-{sim,proxy}-PHASE (KiB);
exit-{sim,proxy}; sim.log and proxy.log (JSON log lines).
"""

import json
import os
import sys

work = sys.argv[1]
facts = json.load(open(os.path.join(work, "facts.json")))
PHASES = ["warmup", "main"]
# Load-generator failure codes that say nothing about whether the daemon counted the
# request (the connection broke or the generator stopped waiting).
AMBIGUOUS = ("io", "closed", "no-reply", "unexpected")
results = []


def check(label, passed, text):
    results.append(passed)
    print("%s %s %s" % ("PASS" if passed else "FAIL", label, text))


def read_json(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(name):
    try:
        with open(os.path.join(work, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def summaries(kind):
    """The python clients' summaries of this kind over both phases (missing ones as None)."""
    names = {"pipeliner": ["pipe1", "pipe2"], "slowloris": ["slow"], "badlines": ["bad"],
             "admin": ["admin"], "flood": ["flood"], "proxy": ["proxy"]}[kind]
    return [(p + "-" + n, read_json("%s-%s.json" % (p, n))) for p in PHASES for n in names]


def log_lines(name):
    lines = []
    try:
        with open(os.path.join(work, name), errors="replace") as f:
            for raw in f:
                try:
                    lines.append((raw, json.loads(raw)))
                except ValueError:
                    lines.append((raw, None))
    except OSError:
        pass
    return lines


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


missing = []          # summaries or outputs that are not there: counts unknown
problems = []         # client-side protocol findings
for p in PHASES:
    if read_text("%s-overran" % p):
        problems.append("%s: clients overran the phase and were stopped" % p)
    failed = read_text("%s-client-failed" % p)
    if failed:
        problems.append("%s: a client exited with an error (see %s/%s-*.err)" % (p, work, p))

# === (1) request accounting ===
by_kind = {}
client_ok = client_failed = gave_up = ambiguous = 0
for kind in ("pipeliner", "slowloris", "badlines"):
    for name, s in summaries(kind):
        if s is None:
            missing.append(name)
            continue
        client_ok += s["ok"]
        client_failed += s["answered"] - s["ok"]
        gave_up += s["gave_up"]
        by_kind[kind] = by_kind.get(kind, 0) + s["answered"]
        problems += ["%s: %s" % (name, t) for t in s["problems"]]
        if s["problem_count"] > len(s["problems"]):
            problems.append("%s: %d more" % (name, s["problem_count"] - len(s["problems"])))
loads = []
for p in PHASES:
    for i in (1, 2, 3):
        name = "%s-load%d.json" % (p, i)
        s = read_json(name)
        if s is None:
            missing.append(name)
            continue
        loads.append(s)
        errors = s.get("errors", {})
        # A request sent on a connection that was then refused (ERR overloaded/exhausted)
        # was never read as a request by the daemon.
        refused = errors.get("overloaded", 0) + errors.get("exhausted", 0)
        unknown = sum(errors.get(code, 0) for code in AMBIGUOUS)
        client_ok += s["requests_ok"]
        client_failed += s["requests_failed"] - refused - unknown
        ambiguous += unknown
        by_kind["load"] = by_kind.get("load", 0) + s["requests_sent"] - refused - unknown
quiet_main = read_json("quiet-sim-main.json")
totals = (quiet_main or {}).get("stats", {}).get("totals") if quiet_main else None
if totals is None:
    check("(1)", False, "requests: no final /api/stats from the daemon")
else:
    d_ok, d_failed = totals["requests_ok"], totals["requests_failed"]
    parts = ", ".join("%s %d" % (k, v) for k, v in sorted(by_kind.items()))
    text = ("requests: daemon ok %d + failed %d = %d; clients saw ok %d + failed %d = %d (%s)"
            % (d_ok, d_failed, d_ok + d_failed, client_ok, client_failed,
               client_ok + client_failed, parts))
    if ambiguous:
        # Requests whose reply the load generator stopped waiting for: the daemon may have
        # answered them (ok or failed) after the generator left.
        passed = (d_ok >= client_ok and d_failed >= client_failed
                  and d_ok + d_failed <= client_ok + client_failed + ambiguous)
        text += "; %d requests the load generator gave up on (counted as a range)" % ambiguous
    else:
        passed = d_ok == client_ok and d_failed == client_failed
    if gave_up:
        passed = False
        text += "; %d requests sent that never got a reply" % gave_up
    if missing:
        passed = False
        text += "; missing client results: %s" % ", ".join(missing)
    check("(1)", passed, text)


# === (2) everything released ===
def idle_check(label, tag):
    parts = []
    passed = True
    for p in PHASES:
        q = read_json("quiet-%s-%s.json" % (tag, p))
        if q is None:
            passed = False
            parts.append("%s: no answer" % p)
            continue
        s = q["stats"] or {}
        used = sum(m["used"] for m in s.get("machines", []))
        queued = sum(m["queued"] for m in s.get("machines", []))
        conns = sum(m["connections"] for m in s.get("machines", []))
        open_ = s.get("totals", {}).get("connections_open")
        if q["idle"]:
            parts.append("after %s: connections_open 0, every used 0 within %.1f s (%d -> %d machines)"
                         % (p, q["idle_after_s"], len(s["machines"]), q["machines_at_end"]))
        else:
            passed = False
            parts.append("after %s: NOT idle after %.0f s: connections_open %s, used %.3f, "
                         "connections %d, queued %d" % (p, q["seconds"], open_, used, conns, queued))
    check(label, passed, "released: " + "; ".join(parts))


idle_check("(2)", "sim")


# === (3) memory ===
def rss_check(label, tag):
    settled = read_text("rss-%s-warmup" % tag)
    final = read_text("rss-%s-main" % tag)
    if not settled or not final:
        check(label, False, "RSS: not measured")
        return
    settled, final = int(settled), int(final)
    if not settled or not final:
        check(label, False, "RSS: not measured (the daemon was gone)")
        return
    change = 100.0 * (final - settled) / settled
    check(label, abs(change) <= 10.0,
          "RSS: %.1f MiB settled after the warm-up, %.1f MiB after the main phase (%+.1f %%, limit 10 %%)"
          % (settled / 1024, final / 1024, change))


rss_check("(3)", "sim")


# === (4) logs ===
def log_check(label, name, expected_errors):
    lines = log_lines(name)
    panics = [raw for raw, _ in lines if "panicked" in raw]
    errors = [j for _, j in lines if j and j.get("level") == "ERROR"]
    ours = [e for e in errors
            if e.get("message", "").startswith("reload failed, keeping the old configuration")]
    others = [e for e in errors if e not in ours]
    not_json = [raw for raw, j in lines if j is None]
    warns = sum(1 for _, j in lines if j and j.get("level") == "WARN")
    passed = not panics and not others and len(ours) == expected_errors
    text = ("logs (%s, %d lines): %d panicked, %d ERROR (%d expected from the broken reloads), %d WARN"
            % (name, len(lines), len(panics), len(errors), expected_errors, warns))
    if not passed:
        for raw in (panics + [json.dumps(e) for e in others])[:5]:
            text += "\n     " + raw.strip()[:300]
    if not_json:
        text += "; %d lines not JSON, first: %s" % (len(not_json), not_json[0].strip()[:200])
    check(label, passed, text)


log_check("(4)", "sim.log", facts["broken_reloads"])

# === (5) client-side protocol checks ===
admin_switches = {}
for name, s in summaries("admin"):
    if s is None:
        problems.append("%s: no summary" % name)
        continue
    problems += ["%s: %s" % (name, t) for t in s["problems"]]
    for k, v in s["extra"].items():
        if k.startswith("switch:"):
            admin_switches[k[7:]] = admin_switches.get(k[7:], 0) + v
flood = {"rounds": 0, "admitted": 0}
flood_refused = {}
for name, s in summaries("flood"):
    if s is None:
        problems.append("%s: no summary" % name)
        continue
    problems += ["%s: %s" % (name, t) for t in s["problems"]]
    for k in flood:
        flood[k] += s["extra"].get(k, 0)
    for k, v in s["refused"].items():
        flood_refused[k] = flood_refused.get(k, 0) + v
text = "protocol: replies in order with their payloads, expected error codes, closes where due"
if problems:
    text += ": %s" % plural(len(problems), "finding")
    for t in problems[:8]:
        text += "\n     " + t
check("(5)", not problems, text)

# === (6) the faults happened ===
errors_seen = {}
for kind in ("pipeliner", "slowloris", "badlines"):
    for _, s in summaries(kind):
        for k, v in (s or {}).get("errors", {}).items():
            errors_seen[k] = errors_seen.get(k, 0) + v
sim_log = log_lines("sim.log")
reloaded = sum(1 for _, j in sim_log if j and j.get("message") == "configuration reloaded")
strategies = ["round-robin", "random", "least-connections", "least-load", "power-of-two",
              "consistent-hash", "first"]
missing_strategies = [n for n in strategies if not admin_switches.get(n)]
pipe_sessions = sum((s or {}).get("extra", {}).get("sessions", 0) for _, s in summaries("pipeliner"))
load_ok = sum(s["requests_ok"] for s in loads)
busy = errors_seen.get("busy", 0) + sum(s.get("errors", {}).get("busy", 0) for s in loads)
needs = {
    "ERR overloaded": flood_refused.get("overloaded", 0),
    "ERR timeout (line)": errors_seen.get("timeout", 0),
    "ERR too-long": errors_seen.get("too-long", 0),
    "ERR bad-request": errors_seen.get("bad-request", 0),
    "pipeliner sessions": pipe_sessions,
    "load generator OK replies": load_ok,
}
lacking = [k for k, v in needs.items() if not v]
passed = not lacking and not missing_strategies and reloaded >= facts["storms"]
text = ("faults: %d SIGHUPs in %d storms -> %d reloads applied, %d broken reload(s) refused; "
        "%d strategy switches (all 7: %s); floods: %d rounds, %d refused (%s); "
        "slowloris timeouts %d, too-long %d, bad-request %d, busy %d; pipeliner sessions %d"
        % (facts["hups"], facts["storms"], reloaded, facts["broken_reloads"],
           sum(admin_switches.values()), "yes" if not missing_strategies else "missing " + ", ".join(missing_strategies),
           flood["rounds"], sum(flood_refused.values()),
           ", ".join("%s %d" % kv for kv in sorted(flood_refused.items())) or "none",
           errors_seen.get("timeout", 0), errors_seen.get("too-long", 0),
           errors_seen.get("bad-request", 0), busy, pipe_sessions))
if lacking:
    text += "; never seen: " + ", ".join(lacking)
if reloaded < facts["storms"]:
    text += "; fewer reloads than storms"
check("(6)", passed, text)


# === (7) graceful stop ===
def exit_check(label, tag):
    rc = read_text("exit-%s" % tag)
    check(label, rc == "0", "SIGTERM: exit status %s" % rc)


exit_check("(7)", "sim")

# === the proxy-mode daemon ===
if facts["proxy"]:
    idle_check("(2p)", "proxy")
    rss_check("(3p)", "proxy")
    log_check("(4p)", "proxy.log", 0)
    streams = exchanges = broken = nbytes = 0
    pproblems = []
    for name, s in summaries("proxy"):
        if s is None:
            pproblems.append("%s: no summary" % name)
            continue
        streams += s["extra"].get("streams", 0)
        exchanges += s["extra"].get("exchanges", 0)
        broken += s["extra"].get("broken", 0)
        nbytes += s["extra"].get("bytes", 0)
        pproblems += ["%s: %s" % (name, t) for t in s["problems"]]
    px_log = log_lines("proxy.log")
    downs = sum(1 for _, j in px_log if j and j.get("message") == "upstream down")
    text = ("echo: %d streams, %d exchanges (%.1f MiB) echoed intact, %d streams broken by "
            "upstream kills; %d 'upstream down' events"
            % (streams, exchanges, nbytes / 1048576, broken, downs))
    for t in pproblems[:8]:
        text += "\n     " + t
    check("(5p)", not pproblems and exchanges > 0 and downs > 0, text)
    exit_check("(7p)", "proxy")

failed = results.count(False)
print("soak: %d passed, %d failed" % (len(results) - failed, failed))
sys.exit(1 if failed else 0)
