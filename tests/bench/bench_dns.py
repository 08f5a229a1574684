"""DNS queries judged: queries per second and the latency a query gains, in the e2e lab's
namespaces (needs root and dnsmasq).

dnsmasq answers in the server namespace (every name under `ok.bench.test` from its own
records, no upstream); a querier in the client namespace, where the ruleset and the
engine run, sends plain UDP queries for distinct names to it: a bounded count, `WINDOW`
in flight over `SOCKETS` sockets for the rate, one at a time for the latency (on one
socket, whose flow is decided, so what a query gains is its judging; and on a fresh
socket each, as glibc asks, where the flow's decision comes with it). In one run: no
filter; nfguard with a per-exe client whose policy covers the names behind a body of
generated rules; the latency of a name the policy refuses (answered by the engine
itself); no filter again, a control for drift. How many of the queries reached the
engine is read from the queue's own counter (less the answers, which all go there to be
learnt, and each socket's first query, its flow's): an engine that judges every query
sees each datagram, one that only decides flows a socket's first (then the figures are
those of the unjudged path, and the table says so).

    sudo .venv/bin/python -m tests.bench --parts queries
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.bench.policies import BODY, allow_rule, body_rules, client
from tests.bench.report import Figure, percentile
from tests.e2e.lab import ALLOWED_V4, SERVER_V4, Lab

ZONE = "ok.bench.test"  # the names the querier's policy lets it resolve
REFUSED_ZONE = "no.bench.test"  # names no rule covers
WINDOW = 32  # queries in flight in the rate run
# Sockets the rate run spreads its queries over: the ruleset lets 200 answers a second
# (burst 400) reach one socket, so one socket would measure that limit, not the engine.
SOCKETS = 128
ONE_SOCKET_MAX = 350  # sequential queries on one socket: within that burst
LATENCY_P50_TARGET_MS = 0.1
LATENCY_P99_TARGET_MS = 0.5

# Sends `count` A queries for q<i>.<zone> to server:port, `window` at a time (1: each
# waits for its answer), query i on socket i % `sockets` of a pool, or, with sockets = 0,
# each on a fresh socket closed after its answer (as glibc's resolver does); a query
# unanswered for a second is counted lost. Prints JSON: the wall time of the run, each
# answered query's round trip in seconds, the answers' rcodes, and the lost count.
QUERIER = r"""
import json, select, socket, struct, sys, time
server, zone = sys.argv[1], sys.argv[3]
port, count, window, sockets = (int(a) for a in (sys.argv[2], *sys.argv[4:7]))
family = socket.AF_INET6 if ":" in server else socket.AF_INET
def query(i):
    name = b"".join(bytes([len(l)]) + l for l in f"q{i}.{zone}".encode().split(b".")) + b"\0"
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1"
def opened():
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect((server, port))
    return s
pool = [opened() for _ in range(sockets)]
sent, waiting, out = 0, {}, {"rtt": [], "rcodes": {}, "lost": 0}
start = time.monotonic()
while sent < count or waiting:
    while sent < count and len(waiting) < window:
        s = pool[sent % sockets] if sockets else opened()
        waiting[(s, sent & 0xFFFF)] = time.monotonic()
        s.send(query(sent))
        sent += 1
    ready, _, _ = select.select(list({s for s, _ in waiting}), [], [], 1.0)
    now = time.monotonic()
    if not ready:
        out["lost"] += len(waiting)
        for s, _ in waiting:
            if not sockets:
                s.close()
        waiting.clear()
        continue
    for s in ready:
        answer = s.recv(4096)
        if len(answer) < 12:
            continue
        qid, flags = struct.unpack("!HH", answer[:4])
        if (s, qid) in waiting:
            out["rtt"].append(now - waiting.pop((s, qid)))
            rcode = str(flags & 0xF)
            out["rcodes"][rcode] = out["rcodes"].get(rcode, 0) + 1
            if not sockets:
                s.close()
out["seconds"] = time.monotonic() - start
print(json.dumps(out))
"""


def querier_argv(count: int, window: int, sockets: int, zone: str = ZONE,
                 server: str = SERVER_V4, port: int = 53) -> list[str]:
    return [sys.executable, "-c", QUERIER, server, str(port), zone, str(count), str(window),
            str(sockets)]


def query(lab: Lab, count: int, window: int, sockets: int, zone: str = ZONE) -> dict:
    return json.loads(lab.exec(lab.client, *querier_argv(count, window, sockets, zone),
                               check=True, timeout=300).stdout)


def rate(run: dict) -> float:
    """Answered queries per second of a querier run."""
    return len(run["rtt"]) / run["seconds"] if run["seconds"] > 0 else 0.0


def dns_policy(body: int, querier_exe: str) -> str:
    """The querier, matched by its executable, may resolve the names under ZONE (a name
    rule behind `body` generated rules) and reach the lab's DNS server; every other
    process may only query that server (and resolve nothing)."""
    return "\n".join([
        client("querier", [BODY, "names", "dns"], exe=querier_exe),
        client("resolver", ["dns"]),
        body_rules(body),
        allow_rule("names", "bench-names", [f"**.{ZONE}"], [443], "tcp"),
        allow_rule("dns", "lab-dns", [SERVER_V4], [53]),
    ])


@contextlib.contextmanager
def dns_lab() -> Iterator[Lab]:
    """The e2e lab with dnsmasq answering every name under ZONE; removed on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp))
        try:
            lab.start()
            lab.serve_dns(f"--address=/{ZONE}/{ALLOWED_V4}", "--no-negcache",
                          on=(SERVER_V4,))
            yield lab
        finally:
            lab.close()


def queued(lab: Lab) -> int:
    """Packets queue 0 has handed to user space since it was bound."""
    counters = lab.queue_counters().get(0)
    return counters.id_sequence if counters is not None else 0


def judged_queries(queued: int, answered: int, sockets: int) -> int:
    """Of the packets the queue handed to the engine in a rate run, those that were
    queries judged: every answer goes there to be learnt, and each socket's first query
    to have its flow decided; an engine that judges queries sees every other one too."""
    return max(0, queued - answered - sockets)


def query_figures(plain: dict, judged: dict, plain_latency: dict, judged_latency: dict,
                  plain_fresh: dict, judged_fresh: dict, refused: dict, reached: int,
                  sent: int, again: dict) -> list[Figure]:
    """The table's lines from the runs: rates (with the control for drift), the time a
    query gains on a socket whose flow is decided (judging alone; the goal, when every
    query reached the engine) and on a fresh socket (flow and query), a refused name's."""
    every = reached >= 0.9 * sent
    how = (f"{reached:,} queries judged besides each socket's first" if every else
           f"{reached:,} queries judged besides each socket's first: this build judges "
           "none, the figures are the unjudged path (answers learnt, flows decided)")
    base = rate(plain)
    lost = sum(run["lost"] for run in (judged, judged_latency, judged_fresh))
    figures = [Figure(
        f"DNS queries/s, {SOCKETS} UDP sockets, {WINDOW} in flight, dnsmasq answering",
        f"no filter {base:,.0f}/s (again after: {rate(again):,.0f}/s); nfguard "
        f"{rate(judged):,.0f}/s ({rate(judged) / base if base else 0:.2f}); {how}"
        + (f"; {lost} lost" if lost else ""))]
    for plain_run, run, what, goal in (
            (plain_latency, judged_latency, "one socket (its flow decided: the query's "
             "judging alone)", True),
            (plain_fresh, judged_fresh, "a fresh socket each (as glibc: flow and query)",
             False)):
        p50, p99 = (percentile(plain_run["rtt"], q) * 1e3 for q in (0.5, 0.99))
        f50, f99 = (percentile(run["rtt"], q) * 1e3 for q in (0.5, 0.99))
        met = (not run["lost"] and f50 - p50 < LATENCY_P50_TARGET_MS
               and f99 - p99 < LATENCY_P99_TARGET_MS)
        figures.append(Figure(
            f"Query time added p50/p99, {len(run['rtt']):,} sequential queries, {what}",
            f"no filter {p50:.3f}/{p99:.3f} ms, nfguard {f50:.3f}/{f99:.3f} ms: added "
            f"{f50 - p50:+.3f}/{f99 - p99:+.3f} ms",
            f"< {LATENCY_P50_TARGET_MS:g} / {LATENCY_P99_TARGET_MS:g} ms" if goal else "",
            met if goal and every else None))
    if not every:
        figures.append(Figure("Time to the answer of a refused name (the engine answers)",
                              "not measured: this build does not judge queries"))
    else:
        codes = ", ".join(f"rcode {k}: {v}" for k, v in sorted(refused["rcodes"].items()))
        answer = "no answer"
        if refused["rtt"]:
            r50, r99 = (percentile(refused["rtt"], q) * 1e3 for q in (0.5, 0.99))
            answer = f"p50/p99 {r50:.3f}/{r99:.3f} ms ({codes})"
        figures.append(Figure("Time to the answer of a refused name (the engine answers)",
                              answer + (f"; {refused['lost']} lost" if refused["lost"] else "")))
    return figures


def query_rates(count: int = 20_000, latency_count: int = 2_000,
                body: int = 1_000) -> list[Figure]:
    """One run of the part: see the module's docstring."""
    one_socket = min(latency_count, ONE_SOCKET_MAX)
    with dns_lab() as lab:
        query(lab, 200, WINDOW, SOCKETS)  # warm up dnsmasq and the namespace
        plain = query(lab, count, WINDOW, SOCKETS)
        plain_latency = query(lab, one_socket, 1, 1)
        plain_fresh = query(lab, latency_count, 1, 0)
        config = lab.write_config(dns_policy(body, os.path.realpath(sys.executable)),
                                  new_flows_per_user=0)
        lab.start_engine(config)
        try:
            query(lab, 200, WINDOW, SOCKETS)
            before = queued(lab)
            judged = query(lab, count, WINDOW, SOCKETS)
            reached = judged_queries(queued(lab) - before, len(judged["rtt"]), SOCKETS)
            judged_latency = query(lab, one_socket, 1, 1)
            judged_fresh = query(lab, latency_count, 1, 0)
            refused = query(lab, one_socket, 1, 1, REFUSED_ZONE)
        finally:
            lab.stop_engine()
            lab.nfguard("uninstall", "--config", str(config))
        again = query(lab, count, WINDOW, SOCKETS)
    return query_figures(plain, judged, plain_latency, judged_latency, plain_fresh,
                         judged_fresh, refused, reached, count, again)
