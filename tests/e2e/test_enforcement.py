"""The core enforcement path, end to end: real kernel queue, real nftables, real servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.adversary.raw import send_raw
from tests.e2e.lab import (
    ALLOWED_V4,
    ALLOWED_V6,
    CLIENT_V4,
    CLIENT_V6,
    OTHER_V4,
    OTHER_V6,
    WEB_SERVER,
    Lab,
)
from tests.e2e.policies import DENY_REST, allow, everyone, policy


def web_policy(*http_to: str, http_port: int = 80) -> str:
    """Policy "web": TCP to `http_to` on `http_port`, the lab's echo servers; "deny-rest"."""
    return everyone(policy(
        "web",
        allow("allowed-net-http", *http_to, ports=(http_port,), proto="tcp"),
        allow("echo-tcp", "198.18.1.1", ports=(7000,), proto="tcp"),
        allow("echo", "198.18.1.1", ports=(7,), proto="udp"),
    ), DENY_REST)


WEB_POLICY = web_policy("198.18.1.0/24", "fd00:18:1::/48")

REFUSED = 7  # curl: connection refused / reset
TIMED_OUT = 28


@pytest.mark.parametrize(("allowed", "other"), [(ALLOWED_V4, OTHER_V4), (ALLOWED_V6, OTHER_V6)],
                         ids=["ipv4", "ipv6"])
def test_allow_and_deny_by_cidr_and_port(lab: Lab, allowed: str, other: str) -> None:
    lab.serve_http(80, 81)
    lab.start_engine(lab.write_config(WEB_POLICY))

    assert lab.curl(allowed, 80) == (0, "port 80\n")
    # 7, not 28 (--max-time): cut with a reset at once, not left to time out
    assert lab.curl(allowed, 81)[0] == REFUSED, "wrong port must be cut with a reset"
    assert lab.curl(other, 80)[0] == REFUSED, "address outside the CIDR must be cut"
    # Decided flows stay decided in the kernel: the allowed one keeps working.
    assert lab.curl(allowed, 80)[0] == 0

    denied = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 81)
    assert denied["event"]["action"] == "deny"
    assert denied["rule"]["name"] == "deny-rest/everything"


def test_udp_allow_and_deny(lab: Lab) -> None:
    lab.serve_udp_echo(ALLOWED_V4, 7)
    lab.serve_udp_echo(ALLOWED_V4, 9)
    lab.start_engine(lab.write_config(WEB_POLICY))
    assert lab.udp_echo(ALLOWED_V4, 7) == "ok"
    assert lab.udp_echo(ALLOWED_V4, 9) == "refused", "denied UDP gets an ICMP error"
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 9)
    assert event["network"]["transport"] == "udp"
    assert event["event"]["action"] == "deny"


def test_audit_event_fields(lab: Lab) -> None:
    lab.serve_http(80)
    lab.start_engine(lab.write_config(WEB_POLICY))
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("ip") == ALLOWED_V4)
    assert event["event"]["action"] == "allow"
    assert event["event"]["reason"] == "rule_match"
    cgroup = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split("\n")[0]
    unit = event["nfguard"].pop("unit", None)  # present when the cgroup is a unit's
    assert event["nfguard"] == {"mode": "enforce", "verdict": "allow", "evidence": "cidr",
                                "client": "everyone", "cgroup": cgroup}
    assert unit is None or cgroup.endswith("/" + unit)
    assert event["rule"] == {"name": "web/allowed-net-http", "ruleset": "web"}
    # who: curl, run by root from this test's cgroup; nsenter execs it, so its parent is us
    curl = os.path.realpath(shutil.which("curl") or "curl")
    assert event["process"]["executable"] == curl
    assert event["process"]["command_line"].startswith("curl -sS")
    assert event["process"]["pid"] > 1
    assert event["process"]["parent"] == {"pid": os.getpid(),
                                          "executable": os.readlink("/proc/self/exe")}
    assert event["user"] == {"id": "0", "name": "root"}
    assert event["source"]["ip"] == CLIENT_V4
    assert 1024 <= event["source"]["port"] <= 65535
    assert event["destination"] == {"ip": ALLOWED_V4, "port": 80}
    assert event["network"] == {"transport": "tcp", "type": "ipv4", "direction": "egress"}
    assert event["@timestamp"].endswith("Z")
    # One event per flow, not per packet: the HTTP exchange's other packets never queue.
    flows = [e for e in lab.audit_events() if e.get("destination", {}).get("ip") == ALLOWED_V4]
    assert len(flows) == 1


def test_audit_mode_lets_denied_flow_through_and_records_deny(lab: Lab) -> None:
    lab.serve_http(81)
    lab.start_engine(lab.write_config(WEB_POLICY, mode="audit"))
    assert lab.curl(OTHER_V4, 81) == (0, "port 81\n")
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 81)
    assert event["event"]["action"] == "deny"
    assert event["nfguard"]["mode"] == "audit"
    assert event["nfguard"]["verdict"] == "allow"
    assert event["event"]["type"] == ["connection", "allowed"]


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_engine_killed(lab: Lab, fail: str) -> None:
    lab.serve_http(80)
    lab.serve_tcp_echo(ALLOWED_V4, 7000)
    engine = lab.start_engine(lab.write_config(WEB_POLICY, fail=fail))
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    established = lab.open_conversation(ALLOWED_V4, 7000)
    engine.send_signal(signal.SIGKILL)
    engine.wait(timeout=10)
    code, _ = lab.curl(ALLOWED_V4, 80, timeout=2)
    if fail == "closed":
        assert code == TIMED_OUT, "with fail closed no new flow leaves while the engine is down"
    else:
        assert code == 0, "with fail open new flows pass while the engine is down"
    # Decided flows never needed the engine: their verdict is in the kernel's ct mark.
    assert established.exchange("still there") == "still there"


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_engine_fallen_behind(lab: Lab, fail: str) -> None:
    """A bound engine that cannot take more (stopped, its queue of one packet full): with
    fail open the kernel lets new flows pass (the queue's fail-open flag), with fail closed
    it drops them."""
    lab.serve_http(80)
    engine = lab.start_engine(lab.write_config(WEB_POLICY, fail=fail, queue_maxlen=1))
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    engine.send_signal(signal.SIGSTOP)
    try:
        waiting = lab.spawn(lab.client, "curl", "-s", "--max-time", "5", "-o", "/dev/null",
                            f"http://{ALLOWED_V4}:80/")
        try:
            lab.wait_until(lambda: lab.queue_counters()[0].length == 1)
            code, _ = lab.curl(ALLOWED_V4, 80, timeout=2)
            dropped = lab.queue_counters()[0].dropped
        finally:
            waiting.kill()
            waiting.wait()
    finally:
        engine.send_signal(signal.SIGCONT)
    if fail == "closed":
        assert code == TIMED_OUT and dropped >= 1, "a full queue drops with fail closed"
    else:
        assert code == 0 and dropped == 0, "a full queue lets flows pass with fail open"
    assert lab.curl(ALLOWED_V4, 80)[0] == 0, "the engine carries on once it runs again"


def test_clean_stop_keeps_ruleset_and_audit(lab: Lab) -> None:
    lab.serve_http(80)
    lab.start_engine(lab.write_config(WEB_POLICY))
    for _ in range(5):
        assert lab.curl(ALLOWED_V4, 80)[0] == 0
    assert lab.stop_engine(signal.SIGTERM) == 0
    # Flushed on stop, not lost with the buffer.
    flows = [e for e in lab.audit_events() if e.get("destination", {}).get("port") == 80]
    assert len(flows) == 5
    assert "inet nfguard" in lab.exec(lab.client, "nft", "list", "tables").stdout
    assert lab.curl(ALLOWED_V4, 80, timeout=2)[0] == TIMED_OUT


def test_malformed_packet_does_not_stop_the_engine(lab: Lab) -> None:
    lab.serve_http(80)
    engine = lab.start_engine(lab.write_config(WEB_POLICY))
    # A raw IPv4 packet claiming TCP with a 4-byte TCP header: conntrack cannot track it,
    # so the kernel drops it before the queue (the sender gets EPERM).
    src, dst = socket.inet_aton(CLIENT_V4), socket.inet_aton(ALLOWED_V4)
    hdr = bytes([0x45, 0, 0, 24, 0, 1, 0, 0, 64, 6, 0, 0]) + src + dst
    assert send_raw(lab, lab.client, [hdr + b"\x01\x02\x03\x04"]) == 0
    # One conntrack tracks but the engine does not read: UDP behind nine destination
    # options headers (the engine follows eight).
    src6, dst6 = (socket.inet_pton(socket.AF_INET6, a) for a in (CLIENT_V6, ALLOWED_V6))
    options = bytes([60, 0, 1, 4, 0, 0, 0, 0]) * 8 + bytes([17, 0, 1, 4, 0, 0, 0, 0])
    body = options + bytes([0x9c, 0x40, 0, 80, 0, 12, 0, 0]) + b"data"
    hdr = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2) + bytes([60, 64]) + src6 + dst6
    assert send_raw(lab, lab.client, [hdr + body]) == 1
    event = lab.wait_for_event(lambda e: e["event"]["reason"] == "unparseable_packet")
    assert event["event"]["action"] == "deny"
    assert engine.poll() is None, "the engine must survive"
    assert lab.curl(ALLOWED_V4, 80)[0] == 0, "and keep deciding"


def test_filtered_loopback_is_judged_and_cut_at_once(lab: Lab) -> None:
    """engine.filter_loopback: the host's flows to itself are judged too, and a denied one
    fails at once: the reset the cut sends back over lo is not cut in its turn."""
    for port in (8080, 8081):
        lab.spawn(lab.client, sys.executable, "-c", WEB_SERVER, str(port),
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    local = web_policy("127.0.0.1", http_port=8080)
    lab.start_engine(lab.write_config(local, filter_loopback=True))
    lab.wait_until(lambda: lab.curl("127.0.0.1", 8080)[0] == 0)
    assert lab.curl("127.0.0.1", 8081, timeout=5)[0] == REFUSED, "cut, not left to time out"
    denied = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 8081)
    assert denied["event"]["action"] == "deny"
