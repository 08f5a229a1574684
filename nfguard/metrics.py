"""Counters kept on the verdict path as plain ints and dicts (cheap), exported to
Prometheus by a collector that reads them only when scraped.

Nothing here runs per packet except `Stats.count` and `Latency.observe` (an int add and a
bisect); the kernel's queue counters, cache sizes and attribution figures are read at
scrape time.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from nfguard.config import MetricsConfig, parse_listen
from nfguard.engine import Decision
from nfguard.names.cache import NameCache
from nfguard.nft import COUNTERS

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


# Attribution figures that are sizes (gauges); every other key is a counter.
ATTRIBUTION_GAUGES = frozenset({"inode_cache", "proc_cache", "exe_hashes", "fd_dirs",
                                "cgroups_tracked"})


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
    # the ruleset's named counters, read from the kernel (see nfguard.nft.CounterReader)
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


# Stats fields that add up over workers (the rest describe the policy this process runs).
_SUMMED = ("packets", "unparseable", "errors", "pending_flows", "hello_timeouts",
           "dns_answers", "dns_bindings", "dns_cut", "dns_unparseable", "dns_untrusted",
           "dns_out_of_order", "dns_queries", "dns_queries_refused", "dns_queries_unparseable")


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
        decisions = CounterMetricFamily(
            "nfguard_decisions", "Flows decided, by policy decision and what the kernel was told",
            labels=["action", "verdict", "client", "rule", "evidence"],
        )
        for labels, value in dict(stats.decisions).items():
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

        yield from self._kernel_queue(CounterMetricFamily, GaugeMetricFamily)
        yield from self._ruleset_counters(CounterMetricFamily)
        yield from self._name_cache(CounterMetricFamily, GaugeMetricFamily)
        yield from self._attribution(CounterMetricFamily, GaugeMetricFamily)

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
        """What the ruleset dropped or let pass without the engine (nfguard.nft.COUNTERS);
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
            if key in ATTRIBUTION_GAUGES:
                yield gauge(f"nfguard_attribution_{key}", f"Process attribution: {key} size",
                            value=value)
            else:
                yield counter(f"nfguard_attribution_{key}", f"Process attribution: {key}",
                              value=value)


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
)


def serve(settings: MetricsConfig, sources: Sources) -> object | None:
    """Start the exporter thread (HTTPS when a certificate is configured); returns the
    server (to shut down) or None when disabled."""
    if not settings.listen:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StatsCollector(sources))  # type: ignore[arg-type]
    host, port = parse_listen(settings.listen)
    server, _thread = start_http_server(port, addr=host, registry=registry,
                                        certfile=settings.tls_cert or None,
                                        keyfile=settings.tls_key or None)
    scheme = "https" if settings.tls_cert else "http"
    log.info("metrics on %s://%s/metrics", scheme, settings.listen)
    return server
