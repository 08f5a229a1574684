"""Everything the exporter (and `nfguard status`) reads at scrape time: this process's
counters, the kernel's queue counters, the workers' reports, summed over workers."""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from nfguard.audit import AuditFigures
from nfguard.metrics.counts import Latency, Stats
from nfguard.names.cache import NameCache
from nfguard.policy.model import Client
from nfguard.version import version

NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"  # per network namespace


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
