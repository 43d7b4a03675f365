"""The report half of scripts/bench.sh: reads the per-run files the script wrote into its
temporary folder and prints a table of means, ratios and per-round values.

Files: TEST-SRV-ROUND.json (a generator's JSON summary), TEST-SRV-ROUND.cpu (server and
generator CPU seconds), c-SRV-ROUND.rss (idle-connection RSS), reaction.json.
"""
import json


class Runs:
    """The runs of one bench section in folder `tmp`, `rounds` rounds each."""

    def __init__(self, tmp, rounds):
        self.tmp, self.rounds = tmp, rounds
        self.rows = []

    def load(self, name):
        with open(f"{self.tmp}/{name}") as f:
            return json.load(f)

    def series(self, test, srv, key):
        """`key` of each round's summary (`p99`: its latency p99); no request may fail."""
        out = []
        for r in range(1, self.rounds + 1):
            d = self.load(f"{test}-{srv}-{r}.json")
            if "requests_failed" in d:
                assert d["requests_failed"] == 0, f"{test}-{srv}-{r}: {d['errors']}"
            out.append(d["latency_ms"]["p99"] if key == "p99" else d[key])
        return out

    def cpu(self, test, srv, what):
        """Per round: the server's CPU µs per request (`us_per`), or the generator's CPU use
        in % of one core (`gen`)."""
        out = []
        for r in range(1, self.rounds + 1):
            c, d = self.load(f"{test}-{srv}-{r}.cpu"), self.load(f"{test}-{srv}-{r}.json")
            count = d.get("requests") or d.get("requests_ok")
            if what == "us_per":
                out.append(1e6 * c["server_s"] / count)
            else:
                out.append(100.0 * c["gen_s"] / c["wall_s"])
        return out

    def row(self, name, ours, base, fmt, target=None, ratio=True):
        """One table row: means, their ratio, PASS/FAIL of `target(mean, base_mean, ratio)`."""
        a, b = mean(ours), mean(base)
        r = a / b if ratio and b else None
        ok = ("PASS" if target(a, b, r) else "FAIL") if target else ""
        # Three decimals: at two, a ratio of 1.046 would print as a failing "1.05".
        self.rows.append((name, fmt.format(a), fmt.format(b), f"{r:.3f}" if r is not None else "",
                          ok, " / ".join(fmt.format(x) for x in ours),
                          " / ".join(fmt.format(x) for x in base)))

    def print_table(self, header):
        w = [max(len(str(x[i])) for x in self.rows + [header]) for i in range(len(header))]
        line = lambda cells: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells)) + " |"
        print(line(header))
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
        for r in self.rows:
            print(line(r))


def mean(xs):
    return sum(xs) / len(xs)


def ceiling_table(runs):
    """The proxy section with CEILING=1: elastic-lb and the two featureless proxies of
    benches/ceiling (epoll floor, io_uring ceiling), each as a ratio to HAProxy."""
    names = [("lbp", "elastic-lb"), ("epl", "epoll floor"), ("url", "io_uring")]
    metrics = [
        ("(pa) closed loop, req/s", lambda s: runs.series("pa", s, "requests_per_s"), "{:.0f}"),
        ("(pp) pingpong, req/s", lambda s: runs.series("pp", s, "requests_per_s"), "{:.0f}"),
        ("(pa) CPU per request, us", lambda s: runs.cpu("pa", s, "us_per"), "{:.2f}"),
        ("(pa) p99, ms", lambda s: runs.series("pa", s, "p99"), "{:.2f}"),
        ("(pb) connections/s", lambda s: runs.series("pb", s, "connections_per_s"), "{:.0f}"),
        ("(pb) CPU per connection, us", lambda s: runs.cpu("pb", s, "us_per"), "{:.2f}"),
        ("(pb) p99, ms", lambda s: runs.series("pb", s, "p99"), "{:.2f}"),
    ]
    header = ["ceiling (ratio to HAProxy)", "HAProxy"] + [n for _, n in names]
    rows = []
    for label, get, fmt in metrics:
        base = mean(get("hap"))
        cells = [label, fmt.format(base)]
        for srv, _ in names:
            v = mean(get(srv))
            cells.append(f"{fmt.format(v)} ({v / base:.2f})" if base else fmt.format(v))
        rows.append(cells)
    w = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))
