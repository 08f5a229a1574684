"""engine.workers = 2: two engine processes, two kernel queues, one set of DNS names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.e2e.lab import SERVER_V4, Lab, run
from tests.e2e.test_service import METRICS, scrape

# Sixteen web addresses, each with its name: flows to every one of them must get their
# names from whichever worker read the DNS answer.
ADDRESSES = [f"198.18.3.{i}" for i in range(1, 17)]

POLICY = """
    [[client]]
    name = "everyone"
    policies = ["web"]

    [[policy]]
    name = "web"

    [[policy.rule]]
    name = "dns"
    action = "allow"
    to = ["198.18.0.2"]
    ports = [53]

    [[policy.rule]]
    name = "by-name"
    action = "allow"
    to = ["**.test"]
    ports = [80]
    proto = "tcp"
"""


def status(lab: Lab, config: object) -> dict:
    return json.loads(lab.nfguard("status", "--json", "--config", str(config)).stdout)


def start(lab: Lab) -> object:
    for address in ADDRESSES:
        run("ip", "-n", lab.server, "addr", "add", f"{address}/32", "dev", "lo")
        run("ip", "-n", lab.client, "route", "add", f"{address}/32", "via", SERVER_V4)
    lab.serve_http(80)
    lab.serve_dns(*(f"--host-record=w{i}.test,{address}"
                    for i, address in enumerate(ADDRESSES, 1)))
    config = lab.write_config(POLICY, workers=2, metrics={"listen": METRICS})
    lab.start_engine(config)  # returns once both workers are bound
    return config


def fetch_all(lab: Lab) -> list[int]:
    """dig then curl every name; the curl exit codes."""
    codes = []
    for i, address in enumerate(ADDRESSES, 1):
        assert lab.dig(f"w{i}.test") == [address]
        result = lab.exec(lab.client, "curl", "-sS", "--max-time", "3", f"http://w{i}.test/",
                          "--resolve", f"w{i}.test:80:{address}")
        codes.append(result.returncode)
    return codes


def test_two_workers_share_names_and_both_decide(lab: Lab) -> None:
    config = start(lab)
    assert fetch_all(lab) == [0] * len(ADDRESSES), lab.engine_log.read_text()
    counts = {number: q.id_sequence for number, q in lab.queue_counters().items()}
    assert set(counts) == {0, 1} and all(counts.values()), counts

    def web_events() -> list[dict]:
        return [e for e in lab.audit_events() if e["destination"]["port"] == 80]

    lab.wait_for_event(lambda _e: len(web_events()) >= len(ADDRESSES))  # both files flushed
    events = web_events()
    assert len(events) == len(ADDRESSES)
    assert {e["rule"]["name"] for e in events} == {"web/by-name"}
    assert {e["destination"]["domain"] for e in events} == {
        f"w{i}.test" for i in range(1, 17)}
    # the main process adds up both workers' counters
    deadline = time.monotonic() + 5
    while True:
        shown = status(lab, config)
        if sum(shown["decisions"].values()) >= 2 * len(ADDRESSES):  # dig + curl per name
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert shown["workers"] == {"count": 2, "alive": 2, "restarts": 0}
    # one answer per name, both workers' added up once (dig retries after 2 s under load)
    assert len(ADDRESSES) <= shown["counters"]["dns_answers"] < 2 * len(ADDRESSES), shown
    # the exporter too: both audit writers' events, and the worker's process figures
    samples = scrape(lab)
    assert samples[("nfguard_audit_events_total", ())] >= 2 * len(ADDRESSES)
    assert samples[("nfguard_audit_write_failures_total", ())] == 0
    assert samples[("nfguard_worker_resident_memory_bytes", (("queue", "1"),))] > 0
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_flows_between_two_hosts_spread_and_each_stays_on_its_worker(lab: Lab) -> None:
    """The queue is picked per flow (by port), not per pair of hosts: a client talking to
    one server keeps both workers busy. Each flow waits for its Host header on the worker
    that saw its SYN: a data packet on the other worker would start the flow over there
    (a second pending flow)."""
    config = start(lab)
    assert lab.dig("w1.test") == [ADDRESSES[0]]
    before = {number: q.id_sequence for number, q in lab.queue_counters().items()}
    flows = 16
    for _ in range(flows):
        result = lab.exec(lab.client, "curl", "-sS", "--max-time", "3", "http://w1.test/",
                          "--resolve", f"w1.test:80:{ADDRESSES[0]}")
        assert result.returncode == 0, lab.engine_log.read_text()
    after = {number: q.id_sequence for number, q in lab.queue_counters().items()}
    assert all(after[number] > before[number] for number in (0, 1)), (before, after)
    deadline = time.monotonic() + 5
    while (shown := status(lab, config))["counters"]["pending_flows"] < flows:
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    lab.wait_for_event(lambda _e: sum(e["destination"]["port"] == 80
                                      for e in lab.audit_events()) >= flows)
    assert status(lab, config)["counters"]["pending_flows"] == flows
    assert sum(e["destination"]["port"] == 80 for e in lab.audit_events()) == flows
    # every per-worker rule goes with uninstall (xt path; on the native path there are none)
    xt = "queue path: xt" in lab.engine_log.read_text()
    listed = lab.exec(lab.client, "iptables", "-w", "-t", "security", "-S", "OUTPUT").stdout
    assert listed.count("nfguard queue") == (2 if xt else 0), listed
    assert lab.stop_engine() == 0
    lab.nfguard("uninstall", "--config", str(config))
    for binary in ("iptables", "ip6tables"):
        for chain in ("OUTPUT", "INPUT", "FORWARD"):
            listed = lab.exec(lab.client, binary, "-w", "-t", "security", "-S", chain).stdout
            assert "nfguard queue" not in listed, listed


def test_a_killed_worker_is_restarted_and_stop_stops_all(lab: Lab) -> None:
    config = start(lab)
    main = lab.engine
    assert main is not None
    children = subprocess.run(["pgrep", "-P", str(main.pid)], capture_output=True,
                              text=True).stdout.split()
    # the engine runs behind nsenter's exec, so its children are the workers
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while status(lab, config)["workers"] != {"count": 2, "alive": 2, "restarts": 1}:
        assert time.monotonic() < deadline, lab.engine_log.read_text()
        time.sleep(0.2)
    while "worker 1 started" not in lab.engine_log.read_text().split("restarting it", 1)[-1]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # the new worker binds its queue
    assert fetch_all(lab) == [0] * len(ADDRESSES), lab.engine_log.read_text()
    assert lab.stop_engine(signal.SIGTERM) == 0
    left = subprocess.run(["pgrep", "-f", f"nfguard run --config {config}"],
                          capture_output=True, text=True).stdout.split()
    assert not left, "workers outlived the main process"
