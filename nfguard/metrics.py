"""Counters kept on the verdict path as plain ints and dicts (cheap), exported to
Prometheus by a collector that reads them only when scraped.

Nothing here runs per packet except `Stats.count` and `Latency.observe` (an int add and a
bisect); the kernel's queue counters, cache sizes and attribution figures are read at
scrape time.
"""

from __future__ import annotations

import functools
import logging
import platform
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from nfguard.audit import AuditFigures, AuditLog
from nfguard.config import MetricsConfig, parse_listen
from nfguard.engine import Decision
from nfguard.names.cache import NameCache
from nfguard.nft.counters import COUNTERS
from nfguard.policy.model import Client, Mode
from nfguard.version import version

log = logging.getLogger(__name__)

NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"  # per network namespace


@dataclass
class Stats:
    packets: int = 0
    unparseable: int = 0
    errors: int = 0
    pending_flows: int = 0  # flows that waited for a presented name
    hello_timeouts: int = 0  # pending flows decided without a name after hello_timeout
    dns_answers: int = 0  # DNS answers learnt from
    dns_bindings: int = 0  # (address, name) bindings learnt
    dns_cut: int = 0  # answers cut by the queue's copy range (accepted, not learnt)
    dns_unparseable: int = 0  # answers that could not be parsed (accepted, not learnt)
    dns_untrusted: int = 0  # answers from servers not in [names] resolvers (accepted, not learnt)
    dns_out_of_order: int = 0  # DNS-over-TCP segments dropped for the server to resend
    dns_queries: int = 0  # DNS queries judged by their name
    dns_queries_refused: int = 0  # queries that did not leave (a refusal went to the client)
    dns_queries_unparseable: int = 0  # query packets that could not be read (dropped)
    dns_streams_cut: int = 0  # DNS-over-TCP query streams cut when no longer followed
    # DNS bindings of names to internal addresses, by kind (nfguard.policy.internal), and
    # the last one ("name -> address (kind)")
    dns_private: Counter[str] = field(default_factory=Counter)
    dns_private_last: str = ""
    reloads: int = 0  # reloads that swapped in a new policy
    reload_failures: int = 0  # reloads rejected; the running policy stayed
    policy_loaded_at: float = 0.0  # wall-clock time the running policy was loaded
    policy_rules: int = 0
    decisions: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)

    def count(self, decision: Decision) -> None:
        self.decisions[(decision.action, decision.verdict, decision.client or "",
                        decision.rule or "", decision.evidence)] += 1


# Upper bounds of the verdict latency buckets, in nanoseconds (10 µs .. 1 s).
LATENCY_BOUNDS_NS = (10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
                     5_000_000, 10_000_000, 25_000_000, 100_000_000, 1_000_000_000)


class Latency:
    """A histogram of plain ints: the time the engine took to answer a queued packet."""

    __slots__ = ("counts", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)  # the last one is +Inf
        self.total_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS_NS, ns)] += 1
        self.total_ns += ns

    def quantile(self, q: float) -> float | None:
        """The upper bound (seconds) of the bucket holding quantile `q`; None before any
        packet, inf past the last bound."""
        counts = list(self.counts)
        total = sum(counts)
        if not total:
            return None
        running = 0
        for bound, count in zip((*LATENCY_BOUNDS_NS, None), counts, strict=True):
            running += count
            if running >= q * total:
                return float("inf") if bound is None else bound / 1e9
        return float("inf")

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs in seconds, as Prometheus histograms want them."""
        counts = list(self.counts)  # one consistent copy (the packet thread keeps adding)
        out, running = [], 0
        for bound, count in zip((*LATENCY_BOUNDS_NS, None), counts, strict=True):
            running += count
            out.append(("+Inf" if bound is None else repr(bound / 1e9), running))
        return out


class QueueCounters(NamedTuple):
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue: int
    peer_portid: int  # the bound listener's netlink port id
    length: int  # packets waiting for a verdict now
    copy_mode: int
    copy_range: int
    dropped: int  # dropped because the queue was full
    user_dropped: int  # dropped because the listener's socket buffer was full (ENOBUFS)
    id_sequence: int


def parse_nfqueue(text: str) -> dict[int, QueueCounters]:
    """The kernel's per-queue counters; lines that do not parse are skipped."""
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or not all(f.isdigit() for f in fields[:8]):
            continue
        counters = QueueCounters(*(int(f) for f in fields[:8]))
        found[counters.queue] = counters
    return found


def read_nfqueue(queue: int, path: str = NFQUEUE_PROC) -> QueueCounters | None:
    """The counters of one queue in this process's network namespace, or None."""
    try:
        with open(path, encoding="ascii") as file:
            return parse_nfqueue(file.read()).get(queue)
    except OSError:
        return None


# What each figure of nfguard.procs.Attributor.stats() counts: the metric's name after
# "nfguard_attribution_", whether it is a size (a gauge) or a count (a counter), and its help.
ATTRIBUTION = {
    "lookups": ("lookups", False, "Sockets looked up to find the sending process"),
    "recorded": ("recorded", False, "Lookups settled by the kernel's record of the socket's "
                 "owner"),
    "refused": ("refused", False, "Lookups whose recorded owner exited or exec'd since it "
                "connected (no process given)"),
    "unrecorded": ("unrecorded", False, "Lookups of sockets without a record of their owner "
                   "(the holder searched for, given as unproven)"),
    "hits": ("hits", False, "Lookups answered from the socket cache"),
    "misses": ("misses", False, "Lookups the socket cache could not answer"),
    "fallbacks": ("fallbacks", False, "Misses the cgroup route could not settle"),
    "failures": ("failures", False, "Lookups that ended without a process"),
    "no_socket": ("no_socket", False, "Lookups that found no socket or inode"),
    "errors": ("errors", False, "Lookups that failed with an error"),
    "pids_probed": ("pids_probed", False, "Processes looked at while searching for a socket"),
    "pids_scanned": ("pids_scanned", False, "Processes whose open files were read"),
    "procs_reads": ("procs_reads", False, "cgroup.procs files read"),
    "events": ("events", False, "Process events (fork, exec, exit) folded in"),
    "forwarded": ("forwarded", False, "Lookups of forwarded flows' senders"),
    "inode_cache": ("cached_sockets", True, "Sockets whose process is cached"),
    "inode_cache_evictions": ("socket_cache_evictions", False,
                              "Sockets dropped from the cache to stay within its size"),
    "proc_cache": ("cached_processes", True, "Processes whose details are cached"),
    "proc_cache_evictions": ("process_cache_evictions", False,
                             "Processes dropped from the cache to stay within its size"),
    "exe_hashes": ("cached_exe_hashes", True, "Executables whose SHA-256 is cached"),
    "exe_hashed": ("exe_hashed", False, "Executables hashed"),
    "fd_dirs": ("tracked_fd_dirs", True, "Processes whose open files are tracked"),
    "cgroups_tracked": ("tracked_cgroups", True, "cgroups whose member processes are tracked"),
    "netns_rescans": ("netns_rescans", False, "Network namespaces searched again for a "
                      "forwarded flow's sender"),
    "cgroup_walks": ("cgroup_walks", False, "Walks of the cgroup tree"),
}

# Clients with a label of their own in nfguard_decisions_total and nfguard_client_mode: the
# first ones in policy order. Others count as OTHER_CLIENTS, so a generated policy of
# thousands of clients still makes a bounded number of series.
CLIENT_SERIES = 100
OTHER_CLIENTS = "(other)"


class Build(NamedTuple):
    """nfguard_build_info's labels."""

    version: str
    python: str
    queue_path: str  # nfguard.nft.NATIVE or XT


def build(queue_path: str) -> Build:
    return Build(version(), platform.python_version(), queue_path)


class Modes(NamedTuple):
    """The running mode: the engine's, and each client's own (policy order; None: the
    engine's)."""

    engine: str
    clients: tuple[tuple[str, str | None], ...]


def running_modes(engine_mode: str, clients: Iterable[Client]) -> Modes:
    return Modes(engine_mode, tuple((client.name, client.mode) for client in clients))


@dataclass
class Sources:
    """Everything the collector (and `nfguard status`) reads, at scrape time."""

    stats: Stats
    latency: Latency = field(default_factory=Latency)
    queue: int | None = None  # NFQUEUE number whose kernel counters are exported
    names: NameCache | None = None
    attribution: Callable[[], dict[str, int]] | None = None
    queue_errors: Callable[[], int] | None = None  # verdicts the queue adapter could not give
    nfqueue_path: str = NFQUEUE_PROC
    # engine.workers > 1: the other workers' latest reports (see nfguard.workers.snapshot)
    workers: Callable[[], list[dict[str, Any]]] | None = None
    restores: Callable[[], int] | None = None  # nfguard.ruleset_watch: the ruleset put back
    build: Build | None = None
    modes: Callable[[], Modes] | None = None  # the running config and policy's
    audit: Callable[[], AuditFigures] | None = None  # this process's audit writer
    # the ruleset's named counters, read from the kernel (see nfguard.nft.counters.CounterReader)
    kernel_counters: Callable[[], dict[str, int]] | None = None

    def kernel_queue(self) -> QueueCounters | None:
        return None if self.queue is None else read_nfqueue(self.queue, self.nfqueue_path)

    def kernel_queues(self) -> list[QueueCounters]:
        """The counters of this process's queue and of every worker's."""
        numbers = [] if self.queue is None else [self.queue]
        numbers += [report["queue"] for report in self._reports()]
        found = []
        for number in sorted(set(numbers)):
            counters = read_nfqueue(number, self.nfqueue_path)
            if counters is not None:
                found.append(counters)
        return found

    def _reports(self) -> list[dict[str, Any]]:
        return self.workers() if self.workers is not None else []

    def total_stats(self) -> Stats:
        """This process's counters plus every worker's (policy fields: this process's)."""
        reports = self._reports()
        if not reports:
            return self.stats
        total = replace(self.stats, decisions=Counter(self.stats.decisions),
                        dns_private=Counter(self.stats.dns_private))
        for report in reports:
            other: Stats = report["stats"]
            for name in _SUMMED:
                setattr(total, name, getattr(total, name) + getattr(other, name))
            total.decisions.update(other.decisions)
            total.dns_private.update(other.dns_private)
            total.dns_private_last = total.dns_private_last or other.dns_private_last
        return total

    def total_latency(self) -> Latency:
        reports = self._reports()
        if not reports:
            return self.latency
        total = Latency()
        total.counts = list(self.latency.counts)
        total.total_ns = self.latency.total_ns
        for report in reports:
            counts, total_ns = report["latency"]
            total.counts = [a + b for a, b in zip(total.counts, counts, strict=True)]
            total.total_ns += total_ns
        return total

    def total_attribution(self) -> dict[str, int] | None:
        if self.attribution is None:
            return None
        total = Counter(self.attribution())
        for report in self._reports():
            total.update(report["attribution"])
        return dict(total)

    def total_queue_errors(self) -> int:
        own = self.queue_errors() if self.queue_errors is not None else 0
        return own + sum(report["queue_errors"] for report in self._reports())

    def total_audit(self) -> AuditFigures | None:
        """This process's audit writer's figures plus every worker's (each has its own)."""
        if self.audit is None:
            return None
        figures = [self.audit(), *(report["audit"] for report in self._reports())]
        return AuditFigures(*(sum(column) for column in zip(*figures, strict=True)))


# Stats fields that add up over workers (the rest describe the policy this process runs).
_SUMMED = ("packets", "unparseable", "errors", "pending_flows", "hello_timeouts",
           "dns_answers", "dns_bindings", "dns_cut", "dns_unparseable", "dns_untrusted",
           "dns_out_of_order", "dns_queries", "dns_queries_refused", "dns_queries_unparseable",
           "dns_streams_cut")


class StatsCollector:
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        src = self.sources
        stats = src.total_stats()
        modes = src.modes() if src.modes is not None else None
        yield from self._build_and_modes(GaugeMetricFamily, modes)
        decisions = CounterMetricFamily(
            "nfguard_decisions", "Flows decided, by policy decision, what the kernel was told, "
            f"client (the first {CLIENT_SERIES} in the policy; others as {OTHER_CLIENTS}, no "
            "client as \"\") and evidence; rules are in the audit log",
            labels=["action", "verdict", "client", "evidence"],
        )
        for labels, value in sorted(decision_series(stats.decisions, modes).items()):
            decisions.add_metric(list(labels), value)
        yield decisions
        yield CounterMetricFamily("nfguard_packets", "Packets the engine received",
                                  value=stats.packets)
        yield CounterMetricFamily("nfguard_unparseable_packets",
                                  "Packets that could not be parsed (denied in enforce mode)",
                                  value=stats.unparseable)
        errors = CounterMetricFamily(
            "nfguard_engine_errors", "Internal errors: in the pipeline they become the "
            "fail-mode verdict; in the queue adapter a verdict could not be given",
            labels=["stage"])
        errors.add_metric(["pipeline"], stats.errors)
        errors.add_metric(["queue"], src.total_queue_errors())
        yield errors
        for name, help_text in _NAME_COUNTERS:
            yield CounterMetricFamily(f"nfguard_{name}", help_text, value=getattr(stats, name))
        private = CounterMetricFamily(
            "nfguard_dns_private_bindings", "Bindings of names to internal addresses learnt "
            "from DNS answers, by kind of address ([names] private)", labels=["kind"])
        for kind, value in sorted(stats.dns_private.items()):
            private.add_metric([kind], value)
        yield private

        latency = HistogramMetricFamily(
            "nfguard_verdict_latency_seconds",
            "Time the engine took to decide a queued packet (the verdict then leaves in a train "
            "of up to eight; a held packet: until it was held)")
        total_latency = src.total_latency()
        latency.add_metric([], total_latency.buckets(), sum_value=total_latency.total_ns / 1e9)
        yield latency

        reloads = CounterMetricFamily("nfguard_reloads", "Reloads of config and policy",
                                      labels=["result"])
        reloads.add_metric(["ok"], stats.reloads)
        reloads.add_metric(["failed"], stats.reload_failures)
        yield reloads
        yield GaugeMetricFamily("nfguard_policy_loaded_timestamp_seconds",
                                "When the running policy was loaded (Unix time)",
                                value=stats.policy_loaded_at)
        yield GaugeMetricFamily("nfguard_policy_rules", "Rules in the running policy",
                                value=stats.policy_rules)
        if src.restores is not None:
            yield CounterMetricFamily("nfguard_ruleset_restores", "Times another program "
                                      "removed or changed nfguard's ruleset and it was put back",
                                      value=src.restores())

        yield from self._audit(CounterMetricFamily, GaugeMetricFamily)
        yield from self._kernel_queue(CounterMetricFamily, GaugeMetricFamily)
        yield from self._ruleset_counters(CounterMetricFamily)
        yield from self._name_cache(CounterMetricFamily, GaugeMetricFamily)
        yield from self._attribution(CounterMetricFamily, GaugeMetricFamily)
        yield from self._worker_processes(CounterMetricFamily, GaugeMetricFamily)

    def _build_and_modes(self, gauge: type, modes: Modes | None) -> Iterator[object]:
        if self.sources.build is not None:
            info = gauge("nfguard_build_info", "nfguard's version, its Python's, and the "
                         "queue path its ruleset uses (always 1)", labels=list(Build._fields))
            info.add_metric(list(self.sources.build), 1)
            yield info
        if modes is None:
            return
        engine = gauge("nfguard_mode", "The engine's mode (engine.mode): 1 for the running "
                       "one", labels=["mode"])
        for mode in Mode:
            engine.add_metric([mode.value], int(modes.engine == mode))
        yield engine
        clients = gauge("nfguard_clients", "Clients whose flows run in each mode (their own "
                        "or the engine's)", labels=["mode"])
        running = Counter(own or modes.engine for _name, own in modes.clients)
        for mode in Mode:
            clients.add_metric([mode.value], running[mode.value])
        yield clients
        own = gauge("nfguard_client_mode", f"Clients with a mode of their own (the first "
                    f"{CLIENT_SERIES} in the policy): 1 for the running one",
                    labels=["client", "mode"])
        for name, its_mode in [c for c in modes.clients if c[1] is not None][:CLIENT_SERIES]:
            own.add_metric([name, str(its_mode)], 1)
        yield own

    def _audit(self, counter: type, gauge: type) -> Iterator[object]:
        figures = self.sources.total_audit()
        if figures is None:
            return
        yield counter("nfguard_audit_events", "Audit events handed to the audit writer",
                      value=figures.events)
        yield counter("nfguard_audit_write_failures", "Writes of the audit log that failed "
                      "(disk full, I/O error); retried every second", value=figures.write_failures)
        yield gauge("nfguard_audit_kept_bytes", "Audit lines waiting to be written: buffered "
                    "(up to 1 s), or kept back while the file cannot be written",
                    value=figures.kept_bytes)
        yield counter("nfguard_audit_lost_bytes", "Audit lines dropped: the oldest past "
                      f"{AuditLog.KEEP >> 20} MiB kept back, or what could not be written at "
                      "stop", value=figures.lost_bytes)

    def _kernel_queue(self, counter: type, gauge: type) -> Iterator[object]:
        queues = self.sources.kernel_queues()
        if not queues:
            return
        families = (
            (gauge, "nfguard_queue_length", "Packets waiting in the kernel queue for a verdict",
             "length"),
            (counter, "nfguard_queue_dropped",
             "Packets the kernel dropped because the queue was full", "dropped"),
            (counter, "nfguard_queue_user_dropped", "Packets the kernel dropped because the "
             "engine's netlink socket buffer was full", "user_dropped"),
        )
        for kind, name, help_text, key in families:
            family = kind(name, help_text, labels=["queue"])
            for kernel in queues:
                family.add_metric([str(kernel.queue)], getattr(kernel, key))
            yield family

    def _ruleset_counters(self, counter: type) -> Iterator[object]:
        """What the ruleset dropped or let pass without the engine (nfguard.nft.counters.COUNTERS);
        nothing while the table is not loaded."""
        if self.sources.kernel_counters is None:
            return
        try:
            found = self.sources.kernel_counters()
        except Exception:  # a scrape never fails for it
            log.exception("reading the ruleset's counters failed")
            return
        for name, help_text in COUNTERS.items():
            if name in found:
                yield counter(f"nfguard_{name}", help_text, value=found[name])

    def _name_cache(self, counter: type, gauge: type) -> Iterator[object]:
        names = self.sources.names
        if names is None:
            return
        yield gauge("nfguard_name_cache_entries", "(address, name) pairs in the DNS name cache",
                    value=len(names))
        yield counter("nfguard_name_cache_hits", "Name cache lookups that found a live name",
                      value=names.hits)
        yield counter("nfguard_name_cache_misses", "Name cache lookups that found none",
                      value=names.misses)
        yield counter("nfguard_name_cache_evictions",
                      "Pairs dropped from the name cache to stay within names.max_entries",
                      value=names.evictions)

    def _attribution(self, counter: type, gauge: type) -> Iterator[object]:
        figures = self.sources.total_attribution()
        if figures is None:
            return
        for key, value in sorted(figures.items()):
            name, size, help_text = ATTRIBUTION.get(key, (key, False, key.replace("_", " ")))
            kind = gauge if size else counter
            yield kind(f"nfguard_attribution_{name}", f"Process attribution: {help_text}",
                       value=value)


    def _worker_processes(self, counter: type, gauge: type) -> Iterator[object]:
        """Each worker's process_* figures (memory, CPU, fds) as nfguard_worker_*{queue}:
        the exporter's own process collector sees the main process only."""
        from prometheus_client import ProcessCollector

        families: dict[str, Any] = {}
        for report in self.sources._reports():
            pid, queue = report["pid"], str(report["queue"])
            process = ProcessCollector(pid=functools.partial(str, pid), registry=None)
            for found in process.collect():
                name = "nfguard_worker_" + found.name.removeprefix("process_")
                family = families.get(name)
                if family is None:
                    kind = counter if found.type == "counter" else gauge
                    family = families[name] = kind(
                        name, f"Each engine worker's process: {found.documentation}",
                        labels=["queue"])
                family.add_metric([queue], found.samples[0].value)
        yield from families.values()


def decision_series(decisions: Counter[tuple[str, str, str, str, str]],
                    modes: Modes | None) -> Counter[tuple[str, str, str, str]]:
    """The decision counts by (action, verdict, client, evidence): rules summed away, and
    clients past the first CLIENT_SERIES of the running policy counted as OTHER_CLIENTS."""
    named = None if modes is None else {name for name, _ in modes.clients[:CLIENT_SERIES]}
    series: Counter[tuple[str, str, str, str]] = Counter()
    for (action, verdict, client, _rule, evidence), count in dict(decisions).items():
        if named is not None and client and client not in named:
            client = OTHER_CLIENTS
        series[(action, verdict, client, evidence)] += count
    return series


_NAME_COUNTERS = (
    ("pending_flows", "Flows that waited for the name the client presents"),
    ("hello_timeouts", "Pending flows decided without a name after names.hello_timeout"),
    ("dns_answers", "DNS answers whose names were learnt"),
    ("dns_bindings", "Address-name bindings learnt from DNS answers"),
    ("dns_cut", "DNS answers cut by the queue copy range (accepted without learning)"),
    ("dns_unparseable", "DNS answers that could not be parsed (accepted without learning)"),
    ("dns_untrusted", "DNS answers from servers not in [names] resolvers (accepted without "
     "learning)"),
    ("dns_out_of_order", "DNS-over-TCP segments dropped out of order (the server resends)"),
    ("dns_queries", "DNS queries judged by their name (names.queries)"),
    ("dns_queries_refused", "DNS queries refused: none reached a server, the client got a "
     "refusal"),
    ("dns_queries_unparseable", "DNS query packets that could not be read, dropped (NOTIFY, "
     "UPDATE and other non-queries too)"),
    ("dns_streams_cut", "DNS-over-TCP query streams cut because the engine stopped following "
     "them (more open at once than it follows)"),
)


def serve(settings: MetricsConfig, sources: Sources) -> object | None:
    """Start the exporter thread (HTTPS when a certificate is configured); returns the
    server (to shut down) or None when disabled."""
    if not settings.listen:
        return None
    from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

    registry = CollectorRegistry()
    registry.register(StatsCollector(sources))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)  # process_*: memory, CPU, open fds of this process
    host, port = parse_listen(settings.listen)
    server, _thread = start_http_server(port, addr=host, registry=registry,
                                        certfile=settings.tls_cert or None,
                                        keyfile=settings.tls_key or None)
    scheme = "https" if settings.tls_cert else "http"
    log.info("metrics on %s://%s/metrics", scheme, settings.listen)
    return server
