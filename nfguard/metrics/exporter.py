"""The Prometheus exporter: a collector that reads the sources only when scraped, and the
HTTP(S) server it is served on."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from nfguard.audit import AuditLog
from nfguard.config import MetricsConfig, parse_listen
from nfguard.metrics.sources import Build, Modes, Sources
from nfguard.nft.counters import COUNTERS
from nfguard.policy.model import Mode

log = logging.getLogger(__name__)

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
