"""The exporter: what the collector exports from every source, summed over workers and
bounded in series, the server, and the Grafana dashboard and alert rules asking only for
what is exported."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nfguard.audit import AuditFigures
from nfguard.config import MetricsConfig
from nfguard.engine import Decision
from nfguard.metrics.counts import LATENCY_BOUNDS_NS, Latency, Stats
from nfguard.metrics.exporter import ATTRIBUTION as ATTRIBUTION_FIGURES
from nfguard.metrics.exporter import CLIENT_SERIES, OTHER_CLIENTS, StatsCollector, serve
from nfguard.metrics.sources import Build, Modes, Sources, running_modes
from nfguard.names.cache import NameCache
from nfguard.nft.counters import COUNTERS
from nfguard.policy.load import parse_policy_texts
from nfguard.policy.match import CompiledPolicySet
from nfguard.procs import Attributor
from tests.unit.metrics.samples import NFQUEUE_TEXT

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "contrib" / "grafana" / "nfguard-dashboard.json"
ALERTS = REPO / "contrib" / "prometheus" / "nfguard-alerts.yml"
ALERTS_TEST = REPO / "tests" / "data" / "nfguard-alerts-test.yml"

# The figures nfguard.procs.Attributor.stats() gives (a real one, so its keys stay in step).
with Attributor(events=False) as _attributor:
    ATTRIBUTION = {key: 10 + i for i, key in enumerate(_attributor.stats())}


# A worker that has done nothing yet (its process: this one): its figures add nothing.
IDLE_WORKER = {"queue": 1, "pid": os.getpid(), "stats": Stats(), "latency": ([0] * 14, 0),
               "attribution": {}, "queue_errors": 0, "audit": AuditFigures(0, 0, 0, 0)}


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
                   queue_errors=lambda: 3, nfqueue_path=str(proc), restores=lambda: 2,
                   build=Build("1.2.3", "3.11.2", "xt"),
                   modes=lambda: Modes("enforce", (("web", None), ("ci", "audit"))),
                   audit=lambda: AuditFigures(10, 4, 300, 1000),
                   kernel_counters=lambda: dict.fromkeys(COUNTERS, 0),
                   workers=lambda: [IDLE_WORKER])


def scrape(sources: Sources) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(StatsCollector(sources))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_collector_exports_every_source(tmp_path: Path) -> None:
    samples = scrape(full_sources(tmp_path))
    assert samples[("nfguard_decisions_total", (
        ("action", "allow"), ("client", "web"), ("evidence", "cidr"),
        ("verdict", "allow")))] == 1
    assert samples[("nfguard_decisions_total", (
        ("action", "deny"), ("client", ""), ("evidence", "default"),
        ("verdict", "deny")))] == 2
    assert samples[("nfguard_build_info", (
        ("python", "3.11.2"), ("queue_path", "xt"), ("version", "1.2.3")))] == 1
    assert samples[("nfguard_mode", (("mode", "enforce"),))] == 1
    assert samples[("nfguard_mode", (("mode", "audit"),))] == 0
    assert samples[("nfguard_clients", (("mode", "enforce"),))] == 1
    assert samples[("nfguard_clients", (("mode", "audit"),))] == 1
    assert samples[("nfguard_client_mode", (("client", "ci"), ("mode", "audit")))] == 1
    assert not [labels for name, labels in samples
                if name == "nfguard_client_mode" and ("client", "web") in labels], \
        "a client without a mode of its own runs in the engine's"
    assert samples[("nfguard_audit_events_total", ())] == 10
    assert samples[("nfguard_audit_write_failures_total", ())] == 4
    assert samples[("nfguard_audit_kept_bytes", ())] == 300
    assert samples[("nfguard_audit_lost_bytes_total", ())] == 1000
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
    assert samples[("nfguard_attribution_cached_sockets", ())] == \
        ATTRIBUTION["inode_cache"], "a size is a gauge named for what it holds"
    assert samples[("nfguard_attribution_cgroup_walks_total", ())] == \
        ATTRIBUTION["cgroup_walks"]
    assert set(ATTRIBUTION) == set(ATTRIBUTION_FIGURES), "every figure says what it counts"


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



def test_dns_bindings_to_internal_addresses_by_kind_summed_over_workers(
        tmp_path: Path) -> None:
    stats = Stats()
    stats.dns_private.update({"private": 2, "metadata": 1})
    stats.dns_private_last = "a.test -> 10.0.0.1 (private)"
    worker = Stats()
    worker.dns_private.update({"private": 5, "connected": 1})
    worker.dns_private_last = "b.test -> 192.0.2.9 (connected)"
    sources = Sources(stats, queue=0, nfqueue_path=str(tmp_path / "missing"),
                      workers=lambda: [{"queue": 1, "pid": 2**22 + 1, "stats": worker,
                                        "latency": ([0] * (len(LATENCY_BOUNDS_NS) + 1), 0),
                                        "queue_errors": 0, "attribution": {}}])
    samples = scrape(sources)
    assert samples[("nfguard_dns_private_bindings_total", (("kind", "private"),))] == 7
    assert samples[("nfguard_dns_private_bindings_total", (("kind", "metadata"),))] == 1
    assert samples[("nfguard_dns_private_bindings_total", (("kind", "connected"),))] == 1
    assert stats.dns_private == {"private": 2, "metadata": 1}  # the sum is a copy
    assert sources.total_stats().dns_private_last == "a.test -> 10.0.0.1 (private)"


# Label names the exporter may use: none names a rule, a policy, a name or an address.
BOUNDED_LABELS = {"action", "verdict", "client", "evidence", "stage", "result", "queue", "mode",
                  "version", "python", "queue_path", "le"}


def test_the_exporter_serves_families_prometheus_parses(tmp_path: Path) -> None:
    """A scrape of the real exporter: names, types, labels and the suffix conventions
    (counters _total, durations _seconds, sizes _bytes), and the process collector."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(MetricsConfig(listen=f"127.0.0.1:{port}"), full_sources(tmp_path))
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    types = {name: family.type for name, family in families.items()}
    for name, kind in {"nfguard_build_info": "gauge", "nfguard_mode": "gauge",
                       "nfguard_clients": "gauge", "nfguard_client_mode": "gauge",
                       "nfguard_decisions": "counter", "nfguard_audit_write_failures": "counter",
                       "nfguard_audit_kept_bytes": "gauge", "nfguard_audit_lost_bytes": "counter",
                       "nfguard_ruleset_restores": "counter", "nfguard_queue_dropped": "counter",
                       "nfguard_verdict_latency_seconds": "histogram",
                       "nfguard_attribution_cached_sockets": "gauge",
                       "process_resident_memory_bytes": "gauge",
                       "process_cpu_seconds": "counter", "process_open_fds": "gauge",
                       "process_max_fds": "gauge"}.items():
        assert types.get(name) == kind, name
    for name, family in families.items():
        assert family.documentation, f"{name} says what it is"
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, (name, sample.labels)
            if family.type == "counter":
                assert sample.name == f"{name}_total", sample.name
        if family.type == "gauge":
            assert not name.endswith("_total"), name
        if "seconds" in name:
            assert name.endswith("_seconds"), name
        if "bytes" in name:
            assert name.endswith("_bytes"), name
    assert families["nfguard_decisions"].samples[0].labels.keys() == {
        "action", "verdict", "client", "evidence"}


def big_policy(clients: int, rules_per_client: int) -> CompiledPolicySet:
    """One policy per client, every other client in audit mode of its own."""
    text = []
    for c in range(clients):
        mode = 'mode = "audit"\n' if c % 2 else ""
        text.append(f'[[client]]\nname = "c{c}"\nmatch = {{ user = "u{c}" }}\n'
                    f'policies = ["p{c}"]\n{mode}')
        text.append(f'[[policy]]\nname = "p{c}"\n')
        text.extend(f'[[policy.rule]]\nname = "r{r}"\naction = "{("allow", "deny")[r % 2]}"\n'
                    f'to = ["10.{c % 250}.{r // 250}.{r % 250}/32"]\nports = [443]\n'
                    for r in range(rules_per_client))
    return CompiledPolicySet(parse_policy_texts([("big.toml", "\n".join(text))]))


def series_after_every_rule_decided(policies: CompiledPolicySet, tmp_path: Path) -> set[tuple]:
    stats = Stats(policy_rules=policies.source.rule_count)
    for client in policies.clients:
        mode = client.mode or "enforce"
        for rule in policies.policies[client.policies[0]].rules:
            verdict = "allow" if mode == "audit" else rule.action
            stats.count(Decision(rule.action, verdict, mode, "rule_match", "cidr", client.name,
                                 rule.name))
        stats.count(Decision("deny", "deny", mode, "no_rule_match", "default", client.name))
    sources = Sources(stats, nfqueue_path=str(tmp_path / "missing"),
                      modes=lambda: running_modes("enforce", policies.clients),
                      build=Build("1", "3.11", "native"), audit=lambda: AuditFigures(0, 0, 0, 0))
    return set(scrape(sources))


def test_series_stay_bounded_with_a_100k_rule_policy(tmp_path: Path) -> None:
    """Every rule of a 100,000-rule policy (1,000 clients) decides a flow: the exporter's
    series number the same as for one rule a client, and the clients past CLIENT_SERIES
    share one label."""
    big = big_policy(1000, 100)
    assert big.source.rule_count == 100_000
    series = series_after_every_rule_decided(big, tmp_path)
    assert len(series) == len(series_after_every_rule_decided(big_policy(1000, 2), tmp_path))
    decisions = [labels for name, labels in series if name == "nfguard_decisions_total"]
    clients = {dict(labels)["client"] for labels in decisions}
    assert len(clients) == CLIENT_SERIES + 1 and OTHER_CLIENTS in clients
    assert len(series) < 6 * CLIENT_SERIES, len(series)
    rules = {rule.name for policy in big.policies.values() for rule in policy.rules}
    assert not {value for _, labels in series for _, value in labels} & rules


def test_workers_figures_add_up(tmp_path: Path) -> None:
    """With engine.workers > 1 each worker has its own audit writer and counters: the
    exporter shows the sums."""
    worker = {"queue": 1, "pid": 2**22 + 1, "stats": Stats(packets=5),
              "latency": ([0] * 14, 0),
              "attribution": {}, "queue_errors": 1, "audit": AuditFigures(7, 2, 50, 100)}
    sources = Sources(Stats(packets=1), nfqueue_path=str(tmp_path / "missing"),
                      workers=lambda: [worker], audit=lambda: AuditFigures(3, 0, 10, 0))
    samples = scrape(sources)
    assert samples[("nfguard_packets_total", ())] == 6
    assert samples[("nfguard_audit_events_total", ())] == 10
    assert samples[("nfguard_audit_write_failures_total", ())] == 2
    assert samples[("nfguard_audit_kept_bytes", ())] == 60
    assert samples[("nfguard_audit_lost_bytes_total", ())] == 100


def promtool() -> str:
    """Debian ships promtool only inside its prometheus server package: ./bootstrap.sh test
    puts the binary beside the venv's python."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(
        Path(sys.executable).parent))
    if found is None:
        pytest.skip("no promtool (./bootstrap.sh test takes it from Debian's prometheus "
                    "package)")
    return found


def test_alert_rules_pass_promtool_and_fire_when_they_should() -> None:
    """`promtool check rules`, then `promtool test rules`: each alert fires on the series
    that mean trouble (engine down, queue drops, audit not written, ruleset restored, host
    or clients left in audit mode, ...) and not on a healthy host's."""
    tool = promtool()
    for command in ((tool, "check", "rules", str(ALERTS)),
                    (tool, "test", "rules", str(ALERTS_TEST))):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_ask_only_for_exported_metrics(tmp_path: Path) -> None:
    exported = {name for name, _ in scrape(full_sources(tmp_path))}
    exported |= {name.removesuffix("_bucket") for name in exported}  # histograms
    text = ALERTS.read_text()
    used = set(re.findall(r"\bnfguard_\w+", text))
    assert used and used - exported == set(), "metrics the collector does not export"
    alerts = set(re.findall(r"^ *- alert: (\w+)$", text, re.MULTILINE))
    assert alerts >= {"NfguardDown", "NfguardQueueDrops", "NfguardAuditNotWritten",
                      "NfguardRulesetRestored", "NfguardLeftInAuditMode"}
    # promtool's cases: an alert with expected alerts (not "exp_alerts: []") fires.
    fired = set(re.findall(r"alertname: (\w+)\n *exp_alerts:\n", ALERTS_TEST.read_text()))
    assert fired == alerts, "every alert has a case where it fires"


def test_each_worker_process_has_its_memory_cpu_and_fds(tmp_path: Path) -> None:
    gone = {**IDLE_WORKER, "queue": 2, "pid": 2**22 + 1}  # past pid_max: no such process
    samples = scrape(Sources(Stats(), nfqueue_path=str(tmp_path / "missing"),
                             workers=lambda: [IDLE_WORKER, gone]))
    assert samples[("nfguard_worker_resident_memory_bytes", (("queue", "1"),))] > 0
    assert samples[("nfguard_worker_cpu_seconds_total", (("queue", "1"),))] > 0
    assert samples[("nfguard_worker_open_fds", (("queue", "1"),))] > 0
    assert not [labels for _, labels in samples if ("queue", "2") in labels]


def test_exporter_serves_on_loopback_and_shuts_down(tmp_path: Path) -> None:
    """The exporter thread as the daemon starts and stops it: prometheus-client's
    start_http_server returns its server only from 0.20 on (pyproject's floor)."""
    import socket
    import urllib.request

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
