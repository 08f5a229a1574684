"""Metrics: the plain-int histogram, the kernel's queue counters, what the collector
exports, and the Grafana dashboard asking only for what is exported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nfguard.engine import Decision
from nfguard.metrics import (
    LATENCY_BOUNDS_NS,
    Latency,
    Sources,
    Stats,
    StatsCollector,
    parse_nfqueue,
    read_nfqueue,
)
from nfguard.names.cache import NameCache
from nfguard.nft import COUNTERS
from nfguard.procs import Attributor

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "nfguard-dashboard.json"

# /proc/net/netfilter/nfnetlink_queue as the kernel prints it (seq_show's format).
NFQUEUE_TEXT = (
    "    0  23927     3 2  4016  1500    27       4100  1\n"
    "    5      0     0 2  4016     0     0          0  1\n"
)
# The figures nfguard.procs.Attributor.stats() gives (a real one, so its keys stay in step).
with Attributor(events=False) as _attributor:
    ATTRIBUTION = {key: 10 + i for i, key in enumerate(_attributor.stats())}


def test_latency_buckets_are_cumulative_and_sum_in_seconds() -> None:
    latency = Latency()
    for ns in (5_000, 10_000, 10_001, 2_000_000, 5_000_000_000):
        latency.observe(ns)
    buckets = dict(latency.buckets())
    assert buckets["1e-05"] == 2, "a bound includes its own value (le)"
    assert buckets["2.5e-05"] == 3
    assert buckets["0.0025"] == 4
    assert buckets["1.0"] == 4
    assert buckets["+Inf"] == 5
    assert len(buckets) == len(LATENCY_BOUNDS_NS) + 1
    assert latency.total_ns == 5_000 + 10_000 + 10_001 + 2_000_000 + 5_000_000_000


def test_latency_quantiles() -> None:
    latency = Latency()
    assert latency.quantile(0.5) is None
    for _ in range(98):
        latency.observe(30_000)
    latency.observe(400_000)
    latency.observe(3_000_000_000)
    assert latency.quantile(0.5) == 50e-6
    assert latency.quantile(0.99) == 500e-6
    assert latency.quantile(1.0) == float("inf")


def test_parse_nfqueue() -> None:
    queues = parse_nfqueue(NFQUEUE_TEXT + "garbage line\n\n")
    assert set(queues) == {0, 5}
    q = queues[0]
    assert (q.queue, q.peer_portid, q.length, q.copy_range, q.dropped, q.user_dropped) == (
        0, 23927, 3, 4016, 1500, 27)


def test_read_nfqueue(tmp_path: Path) -> None:
    path = tmp_path / "nfnetlink_queue"
    path.write_text(NFQUEUE_TEXT)
    assert read_nfqueue(5, str(path)).dropped == 0  # type: ignore[union-attr]
    assert read_nfqueue(9, str(path)) is None
    assert read_nfqueue(0, str(tmp_path / "missing")) is None


def full_sources(tmp_path: Path) -> Sources:
    stats = Stats(packets=42, errors=1, reloads=2, reload_failures=1, policy_rules=7,
                  policy_loaded_at=1_700_000_000.0)
    stats.count(Decision("allow", "allow", "enforce", "rule_match", "cidr", "web", "lab/web"))
    stats.count(Decision("deny", "deny", "enforce", "no_rule", "default"))
    stats.count(Decision("deny", "deny", "enforce", "no_rule", "default"))
    latency = Latency()
    latency.observe(20_000)
    names = NameCache(max_entries=1)
    names.learn("192.0.2.1", "a.test", 60, 0.0)
    names.learn("192.0.2.2", "b.test", 60, 0.0)  # evicts a.test
    names.names_for("192.0.2.2", 1.0)
    names.names_for("192.0.2.1", 1.0)
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(NFQUEUE_TEXT)
    return Sources(stats, latency, queue=0, names=names, attribution=lambda: dict(ATTRIBUTION),
                   queue_errors=lambda: 3, nfqueue_path=str(proc), restores=lambda: 2)


def scrape(sources: Sources) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(StatsCollector(sources))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_collector_exports_every_source(tmp_path: Path) -> None:
    samples = scrape(full_sources(tmp_path))
    assert samples[("nfguard_decisions_total", (
        ("action", "allow"), ("client", "web"), ("evidence", "cidr"), ("rule", "lab/web"),
        ("verdict", "allow")))] == 1
    assert samples[("nfguard_decisions_total", (
        ("action", "deny"), ("client", ""), ("evidence", "default"), ("rule", ""),
        ("verdict", "deny")))] == 2
    assert samples[("nfguard_packets_total", ())] == 42
    assert samples[("nfguard_engine_errors_total", (("stage", "pipeline"),))] == 1
    assert samples[("nfguard_engine_errors_total", (("stage", "queue"),))] == 3
    assert samples[("nfguard_verdict_latency_seconds_count", ())] == 1
    assert samples[("nfguard_verdict_latency_seconds_bucket", (("le", "2.5e-05"),))] == 1
    assert samples[("nfguard_verdict_latency_seconds_bucket", (("le", "1e-05"),))] == 0
    assert samples[("nfguard_verdict_latency_seconds_sum", ())] == pytest.approx(20e-6)
    assert samples[("nfguard_reloads_total", (("result", "ok"),))] == 2
    assert samples[("nfguard_reloads_total", (("result", "failed"),))] == 1
    assert samples[("nfguard_policy_rules", ())] == 7
    assert samples[("nfguard_policy_loaded_timestamp_seconds", ())] == 1_700_000_000
    assert samples[("nfguard_ruleset_restores_total", ())] == 2
    assert samples[("nfguard_queue_length", (("queue", "0"),))] == 3
    assert samples[("nfguard_queue_dropped_total", (("queue", "0"),))] == 1500
    assert samples[("nfguard_queue_user_dropped_total", (("queue", "0"),))] == 27
    assert samples[("nfguard_name_cache_entries", ())] == 1
    assert samples[("nfguard_name_cache_evictions_total", ())] == 1
    assert samples[("nfguard_name_cache_hits_total", ())] == 1
    assert samples[("nfguard_name_cache_misses_total", ())] == 1
    assert samples[("nfguard_attribution_lookups_total", ())] == ATTRIBUTION["lookups"]
    assert samples[("nfguard_attribution_inode_cache", ())] == ATTRIBUTION["inode_cache"], \
        "a size is a gauge"
    assert samples[("nfguard_attribution_cgroup_walks_total", ())] == \
        ATTRIBUTION["cgroup_walks"]
    exported = {name for name, _ in samples}
    for key in ATTRIBUTION:
        assert f"nfguard_attribution_{key}" in exported or \
            f"nfguard_attribution_{key}_total" in exported


def test_collector_without_optional_sources(tmp_path: Path) -> None:
    samples = scrape(Sources(Stats(), queue=0, nfqueue_path=str(tmp_path / "missing")))
    names = {name for name, _ in samples}
    assert "nfguard_packets_total" in names
    assert not any(n.startswith(("nfguard_queue_", "nfguard_name_cache", "nfguard_attribution",
                                 "nfguard_ruleset"))
                   for n in names)


def test_ruleset_counters_are_read_from_the_kernel_at_scrape_time(tmp_path: Path) -> None:
    """What the ruleset dropped or let pass without the engine: one counter per named nft
    counter, read when scraped (a table not loaded, or a failing read: none)."""
    kernel = {"untracked_dropped": 5, "fail_open_passed": 2}
    reads = []

    def reader() -> dict[str, int]:
        reads.append(1)
        return dict(kernel)

    sources = Sources(Stats(), nfqueue_path=str(tmp_path / "missing"), kernel_counters=reader)
    assert not reads
    samples = scrape(sources)
    assert samples[("nfguard_untracked_dropped_total", ())] == 5
    assert samples[("nfguard_fail_open_passed_total", ())] == 2
    assert not any(name.startswith("nfguard_new_flows_over_limit") for name, _ in samples)
    kernel["untracked_dropped"] = 9
    assert scrape(sources)[("nfguard_untracked_dropped_total", ())] == 9
    assert len(reads) == 2
    assert set(COUNTERS) >= set(kernel)

    def broken() -> dict[str, int]:
        raise OSError("netlink")

    samples = scrape(Sources(Stats(), nfqueue_path=str(tmp_path / "missing"),
                             kernel_counters=broken))
    assert ("nfguard_packets_total", ()) in samples
    assert not any(name.startswith("nfguard_untracked") for name, _ in samples)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert exprs, "the dashboard has queries"
    return exprs


def test_dashboard_queries_only_exported_metrics(tmp_path: Path) -> None:
    exported = {name for name, _ in scrape(full_sources(tmp_path))}
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bnfguard_\w+", expr)}
    assert used - exported == set(), "metrics the collector does not export"
    # Every kind of figure the service promises is on it.
    for needed in ("nfguard_decisions_total", "nfguard_verdict_latency_seconds_bucket",
                   "nfguard_queue_dropped_total", "nfguard_queue_user_dropped_total",
                   "nfguard_queue_length", "nfguard_name_cache_entries",
                   "nfguard_attribution_lookups_total", "nfguard_reloads_total",
                   "nfguard_engine_errors_total"):
        assert needed in used, needed


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "nfguard" and dashboard["title"] == "nfguard"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")")



def test_exporter_serves_on_loopback_and_shuts_down(tmp_path: Path) -> None:
    """The exporter thread as the daemon starts and stops it: prometheus-client's
    start_http_server returns its server only from 0.20 on (pyproject's floor)."""
    import socket
    import urllib.request

    from nfguard.config import MetricsConfig
    from nfguard.metrics import serve

    with socket.socket() as probe:  # a free port (the config takes no port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(MetricsConfig(f"127.0.0.1:{port}"),
                   Sources(Stats(), queue=0, nfqueue_path=str(tmp_path / "missing")))
    assert server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert b"nfguard_packets_total" in answer.read()
    server.shutdown()  # type: ignore[attr-defined]
    assert serve(MetricsConfig(""), Sources(Stats())) is None
