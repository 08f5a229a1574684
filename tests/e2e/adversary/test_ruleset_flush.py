"""Attacks on the ruleset itself: something on the host flushes or rewrites netfilter's
tables (Debian's nftables.service on start, reload and stop, `nft -f` of a file that
starts with `flush ruleset`, iptables-restore) and a denied connection tries to slip out
before or after nfguard notices. nfguard must put its table and xt rules back within
milliseconds, and no byte may pass once it has."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.adversary.gap import Flow, gap
from tests.e2e.lab import (
    ALLOWED_V4,
    CLIENT_V4,
    CLIENT_V6,
    SERVER_V4,
    SERVER_V6,
    SLOWDOWN,
    Lab,
    Recording,
)
from tests.e2e.policies import allow, everyone, policy

METRICS = "127.0.0.1:9808"  # on the client namespace's own loopback
DENIED_PORT, ALLOWED_PORT = 7100, 7101
# Seconds a restore may take, the xt rules included (README: the table is back in a few
# milliseconds, the xt rules in tens); generous, for a busy machine.
GAP = 1.0 * SLOWDOWN

POLICY = everyone(policy("lab", allow("allowed", "198.18.1.0/24", proto="tcp")))

# Debian's /etc/nftables.conf, as nftables.service loads it on start and reload.
DEBIAN_CONF = """\
#!/usr/sbin/nft -f

flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t}
\tchain forward {
\t\ttype filter hook forward priority filter;
\t}
\tchain output {
\t\ttype filter hook output priority filter;
\t}
}
"""

# A host's own firewall as /etc/nftables.conf has one: it tracks connections, so conntrack
# stays on while nfguard's table is gone (tests.e2e.adversary.gap).
HOST_FIREWALL = """\
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t\tct state established,related accept
\t}
}
"""

# Connects over and over, each connection sending a marker with the time it was sent
# (after its handshake), until the deadline; prints how many connections got through.
SENDER = """
import socket, sys, time
host, port, tag, until = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sent = 0
while time.time() < until:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            s.sendall(f"{tag}:{time.time():.6f};".encode())
            sent += 1
    except OSError:
        time.sleep(0.002)
print(sent)
"""


def send_marker(lab: Lab, host: str, port: int, marker: bytes) -> bool:
    """One connection that sends `marker`; whether the handshake completed."""
    code = ("import socket,sys\n"
            "try:\n"
            " s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1)\n"
            " s.sendall(sys.argv[3].encode()); s.close(); print('open')\n"
            "except OSError: print('closed')\n")
    result = lab.exec(lab.client, sys.executable, "-c", code, host, str(port), marker.decode())
    return result.stdout.strip() == "open"


def status(lab: Lab, config: Path) -> dict:
    return json.loads(lab.nfguard("status", "--json", "--config", str(config)).stdout)


def restores_metric(lab: Lab) -> float:
    result = lab.exec(lab.client, "curl", "-sS", "--max-time", "5", f"http://{METRICS}/metrics")
    assert result.returncode == 0, result.stderr
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            if sample.name == "nfguard_ruleset_restores_total":
                return sample.value
    raise AssertionError("no nfguard_ruleset_restores_total in the metrics")


def table_present(lab: Lab) -> bool:
    return lab.exec(lab.client, "nft", "list", "table", "inet", "nfguard").returncode == 0


def xt_path(lab: Lab) -> bool:
    rules = lab.exec(lab.client, "iptables", "-w", "-t", "security", "-S").stdout
    return "nfguard queue" in rules


def started(lab: Lab) -> tuple[Path, Recording]:
    config = lab.write_config(POLICY, metrics={"listen": METRICS})
    recording = lab.record_tcp(SERVER_V4, DENIED_PORT)
    lab.serve_tcp_echo(ALLOWED_V4, ALLOWED_PORT)
    lab.start_engine(config)
    assert not send_marker(lab, SERVER_V4, DENIED_PORT, b"before"), "denied before the flush"
    return config, recording


def nft_file(lab: Lab, text: str) -> None:
    path = lab.workdir / "nftables.conf"
    path.write_text(text)
    lab.exec(lab.client, "nft", "-f", str(path), check=True)


# Each way a host's own tools take nfguard's table away (run in the client namespace).
BREAKERS = {
    "flush-ruleset": lambda lab: lab.exec(lab.client, "nft", "flush", "ruleset", check=True),
    "delete-table": lambda lab: lab.exec(lab.client, "nft", "delete", "table", "inet",
                                         "nfguard", check=True),
    "nftables-service": lambda lab: nft_file(lab, DEBIAN_CONF),
    "flush-table": lambda lab: lab.exec(lab.client, "nft", "flush", "table", "inet",
                                        "nfguard", check=True),
    "delete-rule": lambda lab: lab.exec(
        lab.client, "sh", "-c", "nft -a list chain inet nfguard egress | "
        "awk '/jump cut/ {print $NF}' | xargs -n1 nft delete rule inet nfguard egress handle",
        check=True),
}


@pytest.mark.parametrize("how", sorted(BREAKERS))
def test_a_flushed_ruleset_is_restored_and_nothing_passes_after(lab: Lab, how: str) -> None:
    config, recording = started(lab)
    flushed = time.time()
    BREAKERS[how](lab)
    time.sleep(0.3 * SLOWDOWN)
    marker = f"after-{uuid.uuid4().hex}".encode()
    send_marker(lab, SERVER_V4, DENIED_PORT, marker)
    time.sleep(0.3 * SLOWDOWN)
    assert not recording.contains(marker), f"{how}: a denied flow passed after the restore"
    assert table_present(lab)
    assert send_marker(lab, ALLOWED_V4, ALLOWED_PORT, b"hi"), "allowed flows work again"

    restores = status(lab, config)["ruleset"]
    assert restores["restores"] >= 1
    assert flushed <= restores["last_at"] < flushed + GAP + 1
    assert restores["last_missing"], restores
    assert restores_metric(lab) == restores["restores"]
    text = lab.nfguard("status", "--config", str(config)).stdout
    assert "restored" in text and "ruleset:" in text
    assert "ruleset was changed" in lab.engine_log.read_text()


def test_connections_in_a_tight_loop_across_a_flush(lab: Lab) -> None:
    """Connections made as fast as they can across a flush: those whose bytes left before
    the restore are the stated gap; none sent after it may arrive."""
    config, recording = started(lab)
    tag = uuid.uuid4().hex
    until = time.time() + 3 * SLOWDOWN
    sender = lab.spawn(lab.client, sys.executable, "-c", SENDER, SERVER_V4, str(DENIED_PORT),
                       tag, str(until), stdout=-1, text=True)
    time.sleep(1 * SLOWDOWN)
    flushed = time.time()
    lab.exec(lab.client, "nft", "flush", "ruleset", check=True)
    out, _ = sender.communicate(timeout=20 * SLOWDOWN)
    time.sleep(0.5 * SLOWDOWN)
    restored = status(lab, config)["ruleset"]["last_at"]
    assert restored - flushed < GAP, f"the restore took {restored - flushed:.3f} s"
    stamps = [float(part.split(b":")[1]) for data in recording.payloads()
              for part in data.split(b";") if part.startswith(tag.encode())]
    late = [s for s in stamps if s >= restored]
    assert not late, f"{len(late)} markers sent after the restore arrived ({out.strip()} sent)"
    assert all(flushed <= s for s in stamps), "nothing passed before the flush"


@pytest.mark.parametrize("server", [SERVER_V4, SERVER_V6])
def test_a_connection_opened_in_the_gap_is_cut_at_the_restore(lab: Lab, server: str) -> None:
    """A connection whose handshake and first bytes got out while the table was gone was
    never decided; it must not stay open as a channel once the table is back. The gap is
    held open (the engine stopped across the reload), so a connection always fits in it."""
    lab.exec(lab.client, "nft", "-f", "-", check=True, input=HOST_FIREWALL)
    started(lab)
    port = DENIED_PORT + 10
    recording = lab.record_tcp(server, port)
    tag = uuid.uuid4().hex
    with gap(lab, lab.client, HOST_FIREWALL):
        flow = Flow(lab, lab.client, server, port, "tcp", tag)
    after = f"after-{tag}"
    assert flow.send(after).startswith("cut"), "the connection made in the gap was not cut"
    lab.wait_until(lambda: recording.contains(f"first-{tag}".encode()), timeout=10)
    assert not recording.contains(after.encode()), "the connection made in the gap kept sending"
    source = CLIENT_V6 if ":" in server else CLIENT_V4
    log = lab.engine_log.read_text()
    assert f"cut a flow made while the ruleset was gone: tcp {source} -> {server}" in log
    assert "1 flow(s) made meanwhile cut" in log


@pytest.mark.parametrize("table", ["filter", "security"])
def test_iptables_restore_puts_back_the_xt_rules(lab: Lab, table: str) -> None:
    config, recording = started(lab)
    if not xt_path(lab):
        pytest.skip("the native queue path has no xt rules")
    lab.exec(lab.client, "iptables-restore", input=f"*{table}\nCOMMIT\n", check=True)
    lab.exec(lab.client, "ip6tables-restore", input=f"*{table}\nCOMMIT\n", check=True)
    lab.wait_until(lambda: xt_path(lab), timeout=2)
    marker = f"xt-{uuid.uuid4().hex}".encode()
    assert not send_marker(lab, SERVER_V4, DENIED_PORT, marker)
    assert send_marker(lab, ALLOWED_V4, ALLOWED_PORT, b"hi"), "allowed flows are queued again"
    time.sleep(0.3 * SLOWDOWN)
    assert not recording.contains(marker)
    if table == "security":
        assert status(lab, config)["ruleset"]["restores"] >= 1


def test_with_workers_the_main_process_alone_restores(lab: Lab) -> None:
    config = lab.write_config(POLICY, metrics={"listen": METRICS}, workers=2)
    recording = lab.record_tcp(SERVER_V4, DENIED_PORT)
    lab.start_engine(config)
    lab.exec(lab.client, "nft", "flush", "ruleset", check=True)
    lab.wait_until(lambda: table_present(lab), timeout=2)
    time.sleep(0.5 * SLOWDOWN)
    assert lab.engine_log.read_text().count("ruleset was changed") == 1
    assert status(lab, config)["ruleset"]["restores"] == restores_metric(lab) == 1
    marker = f"workers-{uuid.uuid4().hex}".encode()
    for _ in range(4):  # flows spread over both workers' queues
        send_marker(lab, SERVER_V4, DENIED_PORT, marker)
    time.sleep(0.3 * SLOWDOWN)
    assert not recording.contains(marker)
    if xt_path(lab):
        listed = lab.exec(lab.client, "iptables", "-w", "-t", "security", "-S", "OUTPUT").stdout
        assert listed.count("nfguard queue") == 2, "one rule per worker, once"
