"""New TCP connections per second, connect latency and a policy reload under load, in the
e2e lab's namespaces (needs root, nginx, wrk, dnsmasq; OpenSnitch when installed).

nginx serves in the server namespace; wrk opens a new connection per request
(`Connection: close`) from the client namespace, where the ruleset and the filter run. In
one run: no filter; a bare accept-all NetfilterQueue loop (what Python costs before it
looks at anything, one verdict call per packet; nfguard's adapter sends its verdicts in
trains, which the loop does not); nfguard with its whole pipeline and a per-exe,
name-based policy (wrk's client allows the server by a name this host resolved through
the engine, behind a body of generated rules; audit log and metrics on); the same with
the server allowed by CIDR ahead of the body (decided at the SYN); the same with the
clients in the cgroup shared with every process of the machine; OpenSnitch, headless,
default allow, proc monitor; no filter again, a control for drift. Every nfguard figure
is checked against the audit log: the flows must have been decided by the intended client
and rule.

The clients run in a cgroup of their own, as systemd gives every service and session: the
engine finds a flow's process among its cgroup's. The client namespace reuses TIME_WAIT
ports and lets conntrack forget TIME_WAIT entries after a few seconds: every round opens
~10^5 connections, and without these the later rounds would measure the hunt for a free
port or a full conntrack table, not the filter.

    sudo .venv/bin/python -m tests.bench --parts connections latency reload
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nfguard.procs.cgroups import find_cgroup2_root, parse_proc_cgroup
from tests.bench.policies import BODY, allow_rule, body_rules, client
from tests.bench.report import Figure, percentile
from tests.e2e.lab import ALLOWED_V4, SERVER_V4, Lab

WEB_NAME = "web.bench.test"
METRICS = "127.0.0.1:9808"  # inside the client namespace
RATE_TARGET = 0.6  # of the unfiltered rate, by name
CIDR_TARGET = 0.75  # of the unfiltered rate, by CIDR
OPENSNITCH_TARGET = 40  # times OpenSnitch's rate
LATENCY_TARGET_MS = 0.5  # p99 connect and request time added
WRK_CONNECTIONS = 32

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 0;
    server {{
        listen {addr}:80 reuseport backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

# A Python loop's cost alone: every queued packet accepted, nothing looked at. With
# "two-trips", a flow's first packet is accepted as pending, so its first data segment
# comes back too (as for a flow decided by the name the client presents), then allowed.
ACCEPT_ALL = """
import sys
from netfilterqueue import NetfilterQueue
from nfguard import marks
first = marks.PENDING if sys.argv[1:] == ["two-trips"] else marks.ALLOW
def accept(packet):
    mark = packet.get_mark()
    again = mark & marks.PENDING == marks.PENDING
    packet.set_mark(marks.with_verdict(mark, marks.ALLOW if again else first))
    packet.accept()
q = NetfilterQueue()
q.bind(0, accept, max_len=4096, range=4016)
print("bound", flush=True)
q.run()
"""

# Sequential new connections, each timed: connect() (SYN to established) and the whole
# request (connect, GET with a Host header, answer read to the server's close); "starts"
# are wall-clock times. Runs `count` times, or until SIGINT when count is 0 (its handler
# set anew: a bench started in the background inherits SIGINT ignored); prints JSON.
PROBE = r"""
import json, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
host, port, name, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
request = f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
out = {"starts": [], "connect": [], "request": [], "failures": 0}
try:
    while count == 0 or len(out["starts"]) + out["failures"] < count:
        s = socket.socket()
        s.settimeout(30)
        start = time.monotonic()
        try:
            s.connect((host, port))
            connected = time.monotonic()
            s.sendall(request)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise OSError(f"answer {answer[:20]!r}")
            done = time.monotonic()
            out["starts"].append(time.time() - (done - start))
            out["connect"].append(connected - start)
            out["request"].append(done - start)
        except OSError:
            out["failures"] += 1
        finally:
            s.close()
except KeyboardInterrupt:
    pass
print(json.dumps(out))
"""


# -- the lab -------------------------------------------------------------------------------
@dataclass
class WebLab(Lab):
    """The e2e lab, and the cgroup its client programs (wrk, the probe) run in: one of their
    own, as systemd gives every service and login session, or None: the one they inherit
    (in a container, often the root cgroup, shared with every process of the machine)."""

    client_cgroup: str | None = None

    def client_argv(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        if self.client_cgroup is None:
            return argv
        return ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.client_cgroup,
                *argv)

    def run_client(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.exec(self.client, *self.client_argv(argv), timeout=timeout)

    def spawn_client(self, *argv: str, **kw: object) -> subprocess.Popen:
        return self.spawn(self.client, *self.client_argv(argv), **kw)

    @contextlib.contextmanager
    def clients_in_shared_cgroup(self) -> Iterator[int]:
        """Run the clients in the inherited cgroup meanwhile; yields its process count."""
        own, self.client_cgroup = self.client_cgroup, None
        try:
            root = find_cgroup2_root()
            mine = parse_proc_cgroup(Path("/proc/self/cgroup").read_text()) or "/"
            procs = Path(f"{root}{mine.rstrip('/')}/cgroup.procs")
            yield len(procs.read_text().split()) if root and procs.exists() else 0
        finally:
            self.client_cgroup = own


@contextlib.contextmanager
def web_lab() -> Iterator[WebLab]:
    """The e2e lab with nginx on the allowed server address, dnsmasq naming it, and a
    cgroup for the clients; all removed on the way out."""
    root = find_cgroup2_root()
    cgroup = f"{root}/nfguard-bench-{os.getpid()}.scope" if root else None
    with tempfile.TemporaryDirectory() as tmp:
        lab = WebLab(Path(tmp), client_cgroup=cgroup)
        try:
            if cgroup is not None:
                os.mkdir(cgroup)
            lab.start()
            (Path(tmp) / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, addr=ALLOWED_V4))
            lab.spawn(lab.server, "nginx", "-c", f"{tmp}/nginx.conf",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_listening(80, "tcp")
            lab.serve_dns(f"--host-record={WEB_NAME},{ALLOWED_V4}")
            lab.exec(lab.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535",
                     "net.ipv4.tcp_tw_reuse=1",
                     "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5", check=True)
            yield lab
        finally:
            lab.close()
            if cgroup is not None:
                remove_cgroup(cgroup)


def remove_cgroup(path: str) -> None:
    kill = Path(path) / "cgroup.kill"
    for _ in range(100):
        try:
            if kill.exists():
                kill.write_text("1")
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


@dataclass(frozen=True)
class WrkRun:
    rate: float  # requests (= new connections) per second
    requests: int
    errors: str  # wrk's "Socket errors" line, "" when none


def parse_wrk(out: str) -> WrkRun:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    if not rate or not requests:
        raise RuntimeError(f"wrk said:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    problems = [errors.group(1)] if errors else []
    if non_2xx:
        problems.append(f"non-2xx {non_2xx.group(1)}")
    return WrkRun(float(rate.group(1)), int(requests.group(1)), ", ".join(problems))


def wrk_argv(seconds: int, connections: int = WRK_CONNECTIONS, threads: int = 2) -> list[str]:
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
            "-H", "Connection: close", "-H", f"Host: {WEB_NAME}", f"http://{ALLOWED_V4}/"]


def wrk(lab: WebLab, seconds: int) -> WrkRun:
    return parse_wrk(lab.run_client(*wrk_argv(seconds), timeout=seconds + 60).stdout)


def probe_argv(count: int) -> list[str]:
    return [sys.executable, "-c", PROBE, ALLOWED_V4, "80", WEB_NAME, str(count)]


def probe(lab: WebLab, count: int) -> dict:
    return json.loads(lab.run_client(*probe_argv(count), timeout=120).stdout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its live
    children (engine.workers > 1)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *map(int, children.read_text().split())] if children.exists() else [pid]
    total = 0
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk_costing(lab: WebLab, seconds: int, pid: int) -> tuple[WrkRun, str]:
    """A wrk run, and the CPU time process `pid` (the filter) spent per connection: a
    figure other load on the machine disturbs less than the rate."""
    before = cpu_seconds(pid)
    run = wrk(lab, seconds)
    used = cpu_seconds(pid) - before
    return run, f"{used / max(1, run.requests) * 1e6:.0f} µs CPU per connection"


def queue_drops(lab: Lab) -> int:
    """Packets the kernel dropped on the bound queues (queue full, or not delivered to
    user space) since they were bound; read while the filter is bound."""
    counters = lab.queue_counters()
    if 0 not in counters:
        raise RuntimeError("queue 0 is not bound")
    return sum(c.dropped + c.user_dropped for c in counters.values())


def queued_packets(lab: Lab) -> int:
    """Packets queue 0 has handed to user space since it was bound (its id sequence)."""
    counters = lab.queue_counters().get(0)
    return counters.id_sequence if counters is not None else 0


# -- nfguard -------------------------------------------------------------------------------
def realpath_of(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise RuntimeError(f"{program} is not installed")
    return os.path.realpath(found)


def full_policy(body: int, by_name: bool = True) -> str:
    """wrk and the latency probe, each matched by its executable, reach the server through
    `body` generated rules and then a rule naming it (`by_name`), or by a CIDR rule ahead
    of the body; every other process may only query the lab's DNS server."""
    order = [BODY, "web"] if by_name else ["web", BODY]
    to = [WEB_NAME] if by_name else [f"{ALLOWED_V4}/32"]
    return "\n".join([
        client("wrk", order, exe=realpath_of("wrk")),
        client("probe", order, exe=os.path.realpath(sys.executable)),
        client("resolver", ["dns"]),
        body_rules(body),
        allow_rule("web", "server", to, [80], "tcp"),
        allow_rule("dns", "lab-dns", [SERVER_V4], [53]),
    ])


def nfguard_config(lab: Lab, policy: str, workers: int = 1, one_trip: bool = True) -> Path:
    # wrk is one user: the per-user meter of new flows would measure itself, not the engine
    # The connections are measured, not the lookup of their name: every query passes.
    names: dict[str, object] = {"queries": "any"}
    if not one_trip:
        names["one_trip"] = False
    config = lab.write_config(policy, names=names, workers=workers, new_flows_per_user=0)
    text = config.read_text()
    assert text.count('listen = ""') == 1, text
    config.write_text(text.replace('listen = ""', f'listen = "{METRICS}"'))
    return config


@contextlib.contextmanager
def nfguard_running(lab: Lab, policy: str, workers: int = 1,
                    one_trip: bool = True) -> Iterator[Path]:
    """The engine on `policy` (audit log emptied first), the server's name learnt through
    it (and, with one trip, in the kernel's sets); stopped and its ruleset removed on the
    way out."""
    lab.audit_path.unlink(missing_ok=True)
    config = nfguard_config(lab, policy, workers, one_trip)
    lab.start_engine(config)
    try:
        answer = lab.dig(WEB_NAME)
        if answer != [ALLOWED_V4]:
            raise RuntimeError(f"{WEB_NAME} did not resolve through the engine: {answer}")
        time.sleep(1.0)  # the one-trip sets take the name within half a second
        yield config
    finally:
        lab.stop_engine()
        lab.nfguard("uninstall", "--config", str(config))


def metrics(lab: Lab) -> dict[str, float]:
    """The engine's Prometheus exporter, scraped from inside the client namespace:
    unlabelled samples by name, labelled ones summed by name."""
    text = lab.exec(lab.client, "curl", "-sf", f"http://{METRICS}/metrics", check=True).stdout
    values: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.split("{", 1)[0]] += float(value)
    return dict(values)


def web_events(lab: Lab) -> list[tuple[float, str, str, str, str]]:
    """(wall-clock time, client, rule, action, reason) of every audit event for a flow to
    the web server, in the order decided."""
    found = []
    for event in lab.audit_events():
        if event.get("destination", {}).get("port") == 80:
            when = datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00"))
            found.append((when.timestamp(), event["nfguard"].get("client", "-"),
                          event.get("rule", {}).get("name", "-"), event["event"]["action"],
                          event["event"]["reason"]))
    return found


def web_decisions(lab: Lab, until: float = float("inf")) -> Counter[tuple[str, str, str]]:
    """How many web flows each (client, rule, action) decided, up to wall-clock `until`."""
    return Counter((c, r, a) for when, c, r, a, _why in web_events(lab) if when < until)


def verified(decided: Counter[tuple[str, str, str]], client_name: str, least: int,
             in_flight: int = 0) -> tuple[bool, str]:
    """Whether every web flow was allowed by `client_name` -> web/server, at least `least`
    of them, but for up to `in_flight` others: the connections a client had under way
    when it stopped, whose sockets are gone by the time the engine looks for their
    sender (decided as nobody's, by the catch-all client). And what the audit log showed."""
    intended = decided[(client_name, "web/server", "allow")]
    total = sum(decided.values())
    ok = intended >= least and total - intended <= in_flight
    others = ", ".join(f"{c} -> {r}: {a} {n:,}" for (c, r, a), n in decided.most_common(3)
                       if (c, r, a) != (client_name, "web/server", "allow"))
    note = f"audit: {intended:,} of {total:,} by {client_name} -> web/server"
    return ok, note + (f" (others: {others})" if others else "")


def nfguard_rate(lab: WebLab, seconds: int, body: int, by_name: bool,
                 workers: int = 1, one_trip: bool = True) -> tuple[WrkRun, str, bool]:
    with nfguard_running(lab, full_policy(body, by_name), workers, one_trip):
        assert lab.engine is not None
        run, cost = wrk_costing(lab, seconds, lab.engine.pid)
        scraped = metrics(lab)
        drops = queue_drops(lab)
    ok, note = verified(web_decisions(lab), "wrk", run.requests, in_flight=WRK_CONNECTIONS)
    per_flow = scraped.get("nfguard_packets_total", 0) / max(1, run.requests)
    note = f"{cost}, {per_flow:.1f} queued packets; {note}"
    why = Counter(reason for _t, _c, _r, action, reason in web_events(lab) if action != "allow")
    if why:
        note += " (denied: " + ", ".join(f"{r} {n}" for r, n in why.most_common()) + ")"
    if drops:
        note += f"; **{drops} packets dropped by the queue**"
    return run, note, ok and not drops and not run.errors


def bare_rate(lab: WebLab, seconds: int, argv: tuple[str, ...]) -> tuple[WrkRun, str]:
    """wrk through the ACCEPT_ALL loop (nfguard's ruleset already installed)."""
    bare = lab.spawn(lab.client, sys.executable, "-c", ACCEPT_ALL, *argv,
                     stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None and bare.stdout.readline().strip() == "bound"
        run, cost = wrk_costing(lab, seconds, bare.pid)
        return run, f"{cost}, {queued_packets(lab) / max(1, run.requests):.1f} queued packets"
    finally:
        bare.kill()
        bare.wait()


# -- OpenSnitch ----------------------------------------------------------------------------
def opensnitch_installed() -> bool:
    return shutil.which("opensnitchd") is not None


def opensnitch_version() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "opensnitch"],
                          capture_output=True, text=True, check=False).stdout or "?"


@contextlib.contextmanager
def opensnitch_running(lab: Lab) -> Iterator[int]:
    """opensnitchd in the client namespace: headless (no UI listens on its socket), default
    allow, proc monitor, its own rules directory. It reads its configuration from a fixed
    path, so a copy is bind-mounted over /etc/opensnitchd in a mount namespace of its own.
    Yields its pid. Killed on the way out; its iptables rules, inside the namespace, are
    flushed."""
    home = lab.workdir / "opensnitchd"
    (home / "rules").mkdir(parents=True, exist_ok=True)
    (home / "default-config.json").write_text(json.dumps({
        "Server": {"Address": f"unix://{home}/ui.sock", "LogFile": str(home / "daemon.log")},
        "DefaultAction": "allow", "DefaultDuration": "once", "InterceptUnknown": False,
        "ProcMonitorMethod": "proc", "LogLevel": 2, "Firewall": "iptables",
        "Stats": {"MaxEvents": 150, "MaxStats": 25},
    }))
    (home / "system-fw.json").write_text(json.dumps({"SystemRules": []}))
    log = home / "daemon.log"
    daemon = lab.spawn(
        lab.client, "unshare", "--mount", "sh", "-c",
        'mount --bind "$0" /etc/opensnitchd && exec opensnitchd '
        '-rules-path "$0/rules" -process-monitor-method proc -log-file "$0/daemon.log"',
        str(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 20
        while "NFQUEUE" not in lab.exec(lab.client, "iptables-save").stdout:
            if daemon.poll() is not None or time.monotonic() > end:
                raise RuntimeError("opensnitchd did not start:\n" +
                                   (log.read_text() if log.exists() else "(no log)"))
            time.sleep(0.1)
        time.sleep(1)  # its queue is bound once its rules are in
        yield daemon.pid
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        lab.exec(lab.client, "nft", "flush", "ruleset", check=True)


def opensnitch_rate(lab: WebLab, seconds: int) -> tuple[WrkRun, str, bool]:
    with opensnitch_running(lab) as pid:
        before = queued_packets(lab)
        run, cost = wrk_costing(lab, seconds, pid)
        queued = queued_packets(lab) - before
    note = f"{cost}, {queued / max(1, run.requests):.1f} queued packets"
    return run, note, queued >= run.requests and not run.errors


# -- the parts -----------------------------------------------------------------------------
def connection_rates(lab: WebLab, seconds: int = 10, body: int = 1000, rounds: int = 1,
                     with_opensnitch: bool = True) -> list[Figure]:
    """New connections per second, every configuration `rounds` times in turn (medians)."""
    runs: dict[str, list[WrkRun]] = {}
    notes: dict[str, str] = {}
    valid: dict[str, bool] = {}
    keys = ("none", "bare", "bare2", "names", "names2", "cidr", "shared", "opensnitch")

    def record(key: str, run: WrkRun, note: str = "", ok: bool = True) -> None:
        runs.setdefault(key, []).append(run)
        if note:
            notes[key] = note
        valid[key] = valid.get(key, True) and ok

    wrk(lab, 2)  # warm up
    for _ in range(rounds):
        record("none", wrk(lab, seconds))
        config = nfguard_config(lab, full_policy(body))
        lab.nfguard("install", "--config", str(config))
        try:
            for key, argv in (("bare", ()), ("bare2", ("two-trips",))):
                record(key, *bare_rate(lab, seconds, argv))
        finally:
            lab.nfguard("uninstall", "--config", str(config))
        record("names", *nfguard_rate(lab, seconds, body, by_name=True))
        record("names2", *nfguard_rate(lab, seconds, body, by_name=True, one_trip=False))
        record("cidr", *nfguard_rate(lab, seconds, body, by_name=False))
        with lab.clients_in_shared_cgroup() as shared_procs:
            record("shared", *nfguard_rate(lab, seconds, body, by_name=True))
        if with_opensnitch and opensnitch_installed():
            record("opensnitch", *opensnitch_rate(lab, seconds))
    control = wrk(lab, seconds)
    rate = {key: sorted(r.rate for r in runs[key])[len(runs[key]) // 2]
            for key in keys if key in runs}
    base = rate["none"]

    def shown(key: str) -> str:
        errors = [r.errors for r in runs[key] if r.errors]
        return (f"{rate[key]:,.0f}/s ({rate[key] / base:.2f})" +
                ("" if valid.get(key, True) else " **not verified**") +
                (f"; wrk errors: {errors[0]}" if errors else "") +
                (f"; {notes[key]}" if key in notes else ""))

    how = f"{seconds} s, wrk -t2 -c32, Connection: close"
    if rounds > 1:
        how += f", median of {rounds} rounds"
    figures = [
        Figure(f"New TCP connections/s, no filter ({how})", f"{base:,.0f}/s (1.00)"),
        Figure("... bare accept-all NetfilterQueue loop (Python)", shown("bare")),
        Figure("... the same loop, two trips per connection (SYN, then first data "
               "segment: the trips of a flow decided by name)", shown("bare2")),
        Figure(f"... nfguard, full pipeline: wrk matched by exe, server allowed by DNS-learnt "
               f"name behind {body:,} rules, audit + metrics on", shown("names"),
               f">= {RATE_TARGET} of no filter",
               valid["names"] and rate["names"] >= RATE_TARGET * base),
        Figure("... nfguard, same, the server's address not in the one-trip sets (two "
               "trips: the SYN, then the first data segment; [names] one_trip = false)",
               shown("names2")),
        Figure(f"... nfguard, same, server allowed by CIDR ahead of the {body:,} rules "
               "(decided at the SYN)", shown("cidr"), f">= {CIDR_TARGET} of no filter",
               valid["cidr"] and rate["cidr"] >= CIDR_TARGET * base),
        Figure(f"... nfguard, full pipeline, wrk in a cgroup shared with {shared_procs} "
               "processes (above: one of its own, as systemd gives each service)",
               shown("shared")),
    ]
    if "opensnitch" in rate:
        times = rate["names"] / rate["opensnitch"]
        figures.append(Figure(
            f"... OpenSnitch {opensnitch_version()} (Debian), headless, default allow, proc "
            f"monitor; nfguard (full pipeline) {times:,.0f}x", shown("opensnitch"),
            f">= {OPENSNITCH_TARGET}x slower than nfguard",
            valid["opensnitch"] and valid["names"] and times >= OPENSNITCH_TARGET))
    elif with_opensnitch:
        figures.append(Figure("... OpenSnitch", "not installed (`./bootstrap.sh bench` "
                              "installs it); skipped"))
    figures.append(Figure("... no filter again (control for drift)",
                          f"{control.rate:,.0f}/s ({control.rate / base:.2f})"))
    return figures


def workers_rates(lab: WebLab, seconds: int = 10, body: int = 1000) -> list[Figure]:
    """engine.workers = 1 against 2, the full pipeline by name as in `connections`: the
    flows between wrk and the server spread over the queues by port."""
    figures = []
    one = 0.0
    for workers in (1, 2):
        run, note, ok = nfguard_rate(lab, seconds, body, by_name=True, workers=workers)
        one = one or run.rate
        shown = (f"{run.rate:,.0f}/s" + (f" ({run.rate / one:.2f} of one worker)"
                                         if workers > 1 else "")
                 + ("" if ok else " **not verified**")
                 + (f"; wrk errors: {run.errors}" if run.errors else "") + f"; {note}")
        figures.append(Figure(
            f"engine.workers = 1, full pipeline by name, wrk -t2 -c32 ({seconds} s)"
            if workers == 1 else
            "... engine.workers = 2 (two queues, two processes; CPU of both)", shown))
    return figures


def connect_latency(lab: WebLab, connects: int = 2000, body: int = 1000) -> list[Figure]:
    """p50/p99 of connect() and of a whole request, sequential, no filter vs nfguard."""
    probe(lab, 200)  # warm up
    plain = probe(lab, connects)
    with nfguard_running(lab, full_policy(body)):
        probe(lab, 200)
        filtered = probe(lab, connects)
        drops = queue_drops(lab)
    ok, note = verified(web_decisions(lab), "probe", connects)
    ok = ok and not drops and not plain["failures"] and not filtered["failures"]
    figures = []
    for key, what in (("connect", "Connect time (SYN to established)"),
                      ("request", "Request time (connect, GET, answer; the request is held "
                                  "until its Host is read)")):
        p50, p99 = (percentile(plain[key], q) * 1e3 for q in (0.5, 0.99))
        f50, f99 = (percentile(filtered[key], q) * 1e3 for q in (0.5, 0.99))
        result = (f"no filter {p50:.3f}/{p99:.3f} ms, nfguard {f50:.3f}/{f99:.3f} ms: added "
                  f"{f50 - p50:+.3f}/{f99 - p99:+.3f} ms")
        if key == "connect":
            figures.append(Figure(f"{what} p50/p99, {connects:,} sequential connections",
                                  f"{result}; {note}", f"p99 added < {LATENCY_TARGET_MS:g} ms",
                                  ok and f99 - p99 < LATENCY_TARGET_MS))
        else:
            figures.append(Figure(f"{what} p50/p99", result,
                                  f"p99 added < {LATENCY_TARGET_MS:g} ms",
                                  ok and f99 - p99 < LATENCY_TARGET_MS))
    return figures


def reload_under_load(lab: WebLab, body: int = 100_000, settle: float = 1.0) -> list[Figure]:
    """SIGHUP with a `body`-rule policy while wrk and the probe open connections: how long
    the loop stops deciding (the longest gap between decisions in the audit log), and
    whether any flow failed or any packet was dropped meanwhile."""
    start = time.monotonic()
    with nfguard_running(lab, full_policy(body)):
        started = time.monotonic() - start
        load = lab.spawn_client(*wrk_argv(300, connections=8, threads=1),
                                stdout=subprocess.PIPE, text=True)
        prober = lab.spawn_client(*probe_argv(0), stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(settle)
            log_at = lab.engine_log.stat().st_size
            assert lab.engine is not None
            hup = time.time()
            lab.engine.send_signal(signal.SIGHUP)
            while True:
                log = lab.engine_log.read_text()[log_at:]
                if "reloaded:" in log or "reload rejected" in log or time.time() > hup + 120:
                    break
                time.sleep(0.02)
            reloaded = time.time()
            if "reloaded:" not in log:
                raise RuntimeError(f"the engine did not reload:\n{log}")
            time.sleep(settle)
        finally:
            stopped = time.time()
            for proc in (load, prober):
                proc.send_signal(signal.SIGINT)
            wrk_out, _ = load.communicate(timeout=30)
            probe_out, _ = prober.communicate(timeout=30)
        drops = queue_drops(lab)
    run = parse_wrk(wrk_out)
    probed = json.loads(probe_out)
    events = [e for e in web_events(lab) if e[0] < stopped]  # not flows cut by the stop
    times = [e[0] for e in events if hup - settle <= e[0] <= reloaded + settle]
    stall = max((b - a for a, b in itertools.pairwise(sorted(times))), default=0.0)
    longest = max((d for s, d in zip(probed["starts"], probed["request"], strict=True)
                   if s + d >= hup - settle), default=0.0)
    decided = Counter(e[1:4] for e in events)
    denied = sum(n for (_c, _r, action), n in decided.items() if action != "allow")
    why = Counter(f"{c} {r} {reason}" for _t, c, r, a, reason in events if a != "allow")
    intended = decided[("wrk", "web/server", "allow")] + decided[("probe", "web/server",
                                                                    "allow")]
    ok = (not drops and not run.errors and not probed["failures"] and not denied
          and intended == sum(decided.values()) and intended > 0 and len(times) > 1)
    return [
        Figure(f"Start with a {body:,}-rule policy (load, install, bind, first DNS answer)",
               f"{started:.1f} s"),
        Figure(f"Reload (SIGHUP) of the {body:,}-rule policy under load (wrk -c8 and "
               "sequential requests)",
               f"no decision for {stall:.2f} s (longest request {longest:.2f} s); "
               f"reloaded {reloaded - hup:.1f} s after SIGHUP; failed: wrk "
               f"{run.errors or 0}, probe {probed['failures']} of "
               f"{len(probed['starts']) + probed['failures']:,}; denied {denied}"
               f"{f' ({dict(why)})' if why else ''}; queue drops "
               f"{drops}; {intended:,} flows by the intended rule",
               "no verdict dropped, no flow failed", ok),
    ]
