"""Running nfguard as a service: reload, status, metrics, systemd's notify protocol, the
unit's capabilities, and a flood of new flows. Real queue, real nftables, real clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nfguard.service import CAPABILITIES
from tests.e2e.conftest import make_certs
from tests.e2e.lab import ALLOWED_V4, CLIENT_V4, OTHER_V4, SERVER_V4, Lab

REPO = Path(__file__).resolve().parents[2]
REFUSED, TIMED_OUT = 7, 28
METRICS = "127.0.0.1:9808"  # on the client namespace's own loopback

POLICY = """
    [[client]]
    name = "everyone"
    policies = ["lab"]

    [[policy]]
    name = "lab"

    [[policy.rule]]
    name = "web"
    action = "allow"
    to = ["198.18.1.0/24"]
    ports = [{web}]
    proto = "tcp"

    [[policy.rule]]
    name = "echo"
    action = "allow"
    to = ["198.18.1.1"]
    ports = [7000, 7001]
    proto = "udp"

    [[policy.rule]]
    name = "echo-tcp"
    action = "allow"
    to = ["198.18.1.1"]
    ports = [7000]
    proto = "tcp"

    [[policy.rule]]
    name = "rest"
    action = "deny"
"""


def policy(web: int = 80) -> str:
    return POLICY.format(web=web)


def write_policy(lab: Lab, text: str) -> None:
    (lab.workdir / "rules" / "policy.toml").write_text(text)


def engine_log_since(lab: Lab, offset: int) -> str:
    return lab.engine_log.read_text()[offset:]


def status(lab: Lab, config: Path) -> dict:
    result = lab.nfguard("status", "--json", "--config", str(config))
    return json.loads(result.stdout)


def scrape(lab: Lab, *curl_args: str, url: str = f"http://{METRICS}/metrics") -> dict:
    """{(name, labels as sorted tuple): value} from the engine's exporter."""
    result = lab.exec(lab.client, "curl", "-sS", "--max-time", "5", *curl_args, url)
    assert result.returncode == 0, result.stderr
    samples = {}
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# -- reload ------------------------------------------------------------------------------


def test_reload_changes_policy_without_restart_and_keeps_decided_flows(lab: Lab) -> None:
    lab.serve_http(80, 81)
    lab.serve_tcp_echo(ALLOWED_V4, 7000)
    config = lab.write_config(policy(web=80))
    engine = lab.start_engine(config)
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    assert lab.curl(ALLOWED_V4, 81)[0] == REFUSED
    established = lab.open_conversation(ALLOWED_V4, 7000)

    # The new policy allows 81 instead of 80, and no longer allows the echo flow; the
    # config asks for a second worker, which takes a restart: the reload says so.
    write_policy(lab, policy(web=81).replace("ports = [7000]", "ports = [7999]"))
    config.write_text(config.read_text().replace("[engine]\n", "[engine]\nworkers = 2\n", 1))
    result = lab.nfguard("reload", "--config", str(config))
    assert "reloaded" in result.stdout
    assert "engine.workers changed; restart nfguard to apply it" in result.stdout + \
        result.stderr

    assert lab.curl(ALLOWED_V4, 81) == (0, "port 81\n")
    assert lab.curl(ALLOWED_V4, 80)[0] == REFUSED
    assert established.exchange("decided before") == "decided before", \
        "a flow decided before the reload keeps its verdict"
    assert engine.poll() is None, "the same engine, not a restart"
    denied = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80
                                and e["event"]["action"] == "deny")
    assert denied["rule"]["name"] == "lab/rest"
    assert status(lab, config)["reloads"]["ok"] == 1


def test_broken_policy_is_rejected_with_file_and_line_and_the_running_one_stays(
        lab: Lab) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(policy(web=80))
    engine = lab.start_engine(config)
    broken = policy(web=81) + '\n    [[policy.rule]]\n    action = "maybe"\n'
    write_policy(lab, broken)
    line = next(n for n, text in enumerate(broken.splitlines(), 1) if '"maybe"' in text)
    where = f"{lab.workdir / 'rules' / 'policy.toml'}:{line}"

    # Through the control socket: the caller is told, and the command fails.
    result = lab.nfguard("reload", "--config", str(config), check=False)
    assert result.returncode == 1
    assert where in result.stderr and "running policy stays" in result.stderr

    # Through SIGHUP: the log says where.
    offset = lab.engine_log.stat().st_size
    engine.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while where not in engine_log_since(lab, offset) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert where in engine_log_since(lab, offset)
    assert "reload rejected" in engine_log_since(lab, offset)

    assert lab.curl(ALLOWED_V4, 80) == (0, "port 80\n"), "the running policy stays"
    assert lab.curl(ALLOWED_V4, 81)[0] == REFUSED
    state = status(lab, config)
    assert state["reloads"] == {"ok": 0, "failed": 2, "last_rejection": [
        state["reloads"]["last_rejection"][0], state["reloads"]["last_rejection"][1]]}
    assert where in state["reloads"]["last_rejection"][1]

    # Fixed, a SIGHUP applies it.
    write_policy(lab, policy(web=81))
    engine.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reloaded" not in engine_log_since(lab, offset) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.curl(ALLOWED_V4, 81) == (0, "port 81\n")
    assert engine.poll() is None


def test_a_reload_the_stop_cuts_short_is_answered(lab: Lab) -> None:
    """`nfguard reload` waits for the build; if the daemon stops first, it is told so."""
    config = lab.write_config(policy())
    engine = lab.start_engine(config)
    slow = lab.workdir / "rules" / "zz-slow.toml"
    os.mkfifo(slow)  # the build blocks reading it until it is written to
    waiting = lab.spawn(lab.client, sys.executable, "-m", "nfguard", "reload", "--config",
                        str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = None
    deadline = time.monotonic() + 10
    while writer is None and time.monotonic() < deadline:
        try:  # succeeds once the build has the FIFO open; the build then waits for data
            writer = os.open(slow, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.02)
    assert writer is not None, "the reload never started reading the policy"
    try:
        assert lab.stop_engine() == 0 and engine.returncode == 0
        _out, err = waiting.communicate(timeout=10)
    finally:
        os.close(writer)
    assert waiting.returncode == 1
    assert "stopped before the reload was applied" in err


def test_no_queued_packet_is_lost_while_reloading(lab: Lab) -> None:
    """New flows keep coming while reloads of a large policy run: every one is answered."""
    lab.serve_udp_echo(ALLOWED_V4, 7000)
    # 3,000 rules that never match make each build take a while.
    filler = "".join(f'\n    [[policy.rule]]\n    action = "deny"\n    to = ["10.{i // 250}.'
                     f'{i % 250}.0/24"]\n    ports = [{1 + i}]\n' for i in range(3000))
    text = policy().replace('    [[policy.rule]]\n    name = "web"',
                            filler.lstrip("\n") + '\n    [[policy.rule]]\n    name = "web"')
    config = lab.write_config(text)
    engine = lab.start_engine(config)

    stop = lab.workdir / "stop"
    sender = (
        "import os, socket, sys\n"
        "sent = answered = 0\n"
        f"while not os.path.exists({str(stop)!r}):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    s.settimeout(3)\n"
        f"    s.connect(('{ALLOWED_V4}', 7000))\n"
        "    s.send(b'x%d' % sent)\n"
        "    try:\n"
        "        answered += s.recv(64) == b'x%d' % sent\n"
        "    except OSError:\n"
        "        pass\n"
        "    sent += 1\n"
        "    s.close()\n"
        "print(sent, answered)\n"
    )
    flows = lab.spawn(lab.client, sys.executable, "-c", sender, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    # New flows come in all the while the reloads run: each one a new (UDP) flow.
    reloads = [lab.nfguard("reload", "--config", str(config), check=False).returncode
               for _ in range(5)]
    stop.touch()
    out, err = flows.communicate(timeout=30)
    assert reloads == [0] * 5
    sent, answered = map(int, out.split())
    print(f"reloads: {len(reloads)} of a {3000 + 4}-rule policy while {sent} new flows came")
    assert sent > 0 and answered == sent, f"{sent - answered} of {sent} flows lost: {err}"
    assert engine.poll() is None
    kernel = status(lab, config)["kernel_queue"]
    assert kernel["dropped"] == 0 and kernel["user_dropped"] == 0


def test_audit_file_is_reopened_on_reload(lab: Lab) -> None:
    """logrotate moves the file away and asks for a reload; new events go to a new file."""
    lab.serve_http(80)
    config = lab.write_config(policy())
    lab.start_engine(config)
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80)
    rotated = lab.audit_path.with_name("audit.jsonl.1")
    lab.audit_path.rename(rotated)
    lab.nfguard("reload", "--config", str(config))
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80)
    assert event["event"]["action"] == "allow"
    assert len(lab.audit_events()) == 1, "only the flow after the rotation is in the new file"
    assert len(rotated.read_text().splitlines()) == 1


# -- status ------------------------------------------------------------------------------


def test_status_summarises_the_running_daemon(lab: Lab) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(policy())
    engine = lab.start_engine(config)
    for port in (80, 80, 81):
        lab.curl(ALLOWED_V4, port)
    lab.curl(OTHER_V4, 80)

    text = lab.nfguard("status", "--config", str(config)).stdout
    assert f"running, pid {engine.pid}" in text
    assert f"config:       {config}" in text
    assert "mode enforce, default deny, fail closed" in text
    assert re.search(r"queue: +0 via (xt NFQUEUE|nft queue)", text), text
    assert "4 rules in 1 file under" in text
    assert "4 decided (2 allow, 2 deny)" in text
    assert f"audit:        {lab.audit_path} (4 events written)" in text
    assert "kernel queue: 0 waiting, 0 dropped" in text
    assert "metrics:      off" in text

    # Errors logged by the engine are listed.
    write_policy(lab, "[[client]\n")
    lab.nfguard("reload", "--config", str(config), check=False)
    text = lab.nfguard("status", "--config", str(config)).stdout
    assert "0 applied, 1 rejected" in text
    assert "last errors:" in text and "policy.toml:1" in text


def test_status_and_reload_without_a_daemon_say_so(lab: Lab) -> None:
    config = lab.write_config(policy())
    for command in ("status", "reload"):
        result = lab.nfguard(command, "--config", str(config), check=False)
        assert result.returncode == 1
        assert "nfguard is not running" in result.stderr
        assert str(lab.control_socket) in result.stderr


# -- metrics -----------------------------------------------------------------------------


def test_metrics_after_known_traffic(lab: Lab) -> None:
    lab.serve_http(80, 81)
    config = lab.write_config(policy(), metrics={"listen": METRICS})
    lab.start_engine(config)
    for _ in range(3):
        assert lab.curl(ALLOWED_V4, 80)[0] == 0
    for _ in range(2):
        assert lab.curl(ALLOWED_V4, 81)[0] == REFUSED
    lab.nfguard("reload", "--config", str(config))
    write_policy(lab, "[[client]\n")
    lab.nfguard("reload", "--config", str(config), check=False)

    samples = scrape(lab)
    allow = (("action", "allow"), ("client", "everyone"), ("evidence", "cidr"),
             ("verdict", "allow"))
    assert samples[("nfguard_decisions_total", allow)] == 3
    # "rest" has no `to`: evidence says which kind of rule matched (any destination).
    deny_samples = {k: v for k, v in samples.items()
                    if k[0] == "nfguard_decisions_total" and ("action", "deny") in k[1]}
    assert sum(deny_samples.values()) == 2, deny_samples
    assert all(("client", "everyone") in k[1] and ("verdict", "deny") in k[1]
               for k in deny_samples), deny_samples
    assert not [k for k in samples if any(label == "rule" for label, _ in k[1])], \
        "no label per rule"
    # What an operator alerts on: the build, the mode, the audit writer, the process.
    [build] = [k for k in samples if k[0] == "nfguard_build_info"]
    assert dict(build[1])["queue_path"] in ("native", "xt") and samples[build] == 1
    assert samples[("nfguard_mode", (("mode", "enforce"),))] == 1
    assert samples[("nfguard_mode", (("mode", "audit"),))] == 0
    assert samples[("nfguard_audit_events_total", ())] == 5
    assert samples[("nfguard_audit_write_failures_total", ())] == 0
    assert samples[("nfguard_audit_lost_bytes_total", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    packets = samples[("nfguard_packets_total", ())]
    assert packets == 5, "one queued packet (the SYN) per flow"
    assert samples[("nfguard_verdict_latency_seconds_count", ())] == packets
    assert samples[("nfguard_verdict_latency_seconds_bucket", (("le", "+Inf"),))] == packets
    assert 0 < samples[("nfguard_verdict_latency_seconds_sum", ())] < packets
    assert samples[("nfguard_reloads_total", (("result", "ok"),))] == 1
    assert samples[("nfguard_reloads_total", (("result", "failed"),))] == 1
    assert samples[("nfguard_policy_rules", ())] == 4
    for name in ("nfguard_queue_length", "nfguard_queue_dropped_total",
                 "nfguard_queue_user_dropped_total"):
        assert samples[(name, (("queue", "0"),))] == 0
    assert samples[("nfguard_engine_errors_total", (("stage", "pipeline"),))] == 0
    assert samples[("nfguard_name_cache_entries", ())] == 0


def test_metrics_over_tls(lab: Lab, tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    config = lab.write_config(policy(), metrics={
        "listen": METRICS, "tls_cert": str(cert), "tls_key": str(key)})
    lab.start_engine(config)
    name = "allowed.test"  # in the test certificate
    url = f"https://{name}:9808/metrics"
    samples = scrape(lab, "--cacert", str(ca), "--resolve", f"{name}:9808:127.0.0.1", url=url)
    assert ("nfguard_packets_total", ()) in samples
    plain = lab.exec(lab.client, "curl", "-sS", "--max-time", "3", f"http://{METRICS}/metrics")
    assert "nfguard_packets_total" not in plain.stdout, "no plain HTTP next to HTTPS"


# -- flood -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def engine_pid(lab: Lab) -> int:
    """The python process behind `ip netns exec` (which execs it: the same pid)."""
    assert lab.engine is not None
    return lab.engine.pid


def test_flood_of_new_flows_is_survived_bounded_and_counted(lab: Lab) -> None:
    lab.serve_http(80)
    config = lab.write_config(policy(), metrics={"listen": METRICS}, queue_maxlen=64)
    engine = lab.start_engine(config)
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    before = rss_kib(engine_pid(lab))
    # At least 3 s, until told to stop (30 s at most), 5,000 new flows (distinct ports) over
    # and over, as fast as one process sends: a flow's datagram either reaches the engine or
    # is dropped while the queue is full.
    stop = lab.workdir / "stop-flood"
    flood = (
        "import os, socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "sent, start = 0, time.monotonic()\n"
        f"while time.monotonic() - start < 3 or not os.path.exists({str(stop)!r}):\n"
        "    if time.monotonic() - start > 30:\n"
        "        break\n"
        "    for port in range(20000, 25000):\n"
        "        try:\n"
        f"            s.sendto(b'x', ('{SERVER_V4}', port)); sent += 1\n"
        "        except OSError:\n"
        "            pass\n"
        "print(sent)\n"
    )
    sender = lab.spawn(lab.client, sys.executable, "-c", flood, stdout=subprocess.PIPE,
                       text=True)
    time.sleep(1)
    # The engine answers its control socket in the middle of the flood.
    during = lab.exec(lab.client, sys.executable, "-m", "nfguard", "status", "--json",
                      "--config", str(config), timeout=10)
    assert during.returncode == 0, during.stderr
    assert sender.poll() is None, "the flood was still on"
    stop.touch()
    sent = int(sender.communicate(timeout=60)[0])
    state = status(lab, config)
    assert engine.poll() is None, "the engine survives"
    after = rss_kib(engine_pid(lab))
    kernel = state["kernel_queue"]
    dropped = kernel["dropped"] + kernel["user_dropped"]
    print(f"flood: {sent} datagrams sent, "
          f"{state['counters']['packets']} reached the engine, {kernel['dropped']} dropped "
          f"(queue full), {kernel['user_dropped']} dropped (socket buffer); "
          f"RSS {before} -> {after} KiB")
    assert dropped > 0, "a queue of 64 cannot hold this burst: drops must show"
    assert state["counters"]["packets"] + dropped >= 5000
    assert after - before < 32 * 1024, "memory stays bounded"
    # The same kernel counters in the metrics (they only grow) and in the status text.
    samples = scrape(lab)
    assert samples[("nfguard_queue_dropped_total", (("queue", "0"),))] >= kernel["dropped"]
    assert samples[("nfguard_queue_user_dropped_total", (("queue", "0"),))] >= \
        kernel["user_dropped"]
    text = lab.nfguard("status", "--config", str(config)).stdout
    shown = re.search(r"kernel queue: \d+ waiting, (\d+) dropped \(queue full\), (\d+) dropped",
                      text)
    assert shown and int(shown[1]) + int(shown[2]) >= dropped, text
    # And it still decides.
    assert lab.curl(ALLOWED_V4, 80)[0] == 0
    assert lab.curl(OTHER_V4, 80)[0] == REFUSED


# -- systemd -----------------------------------------------------------------------------


class NotifyListener:
    """What systemd would receive on $NOTIFY_SOCKET: (arrival time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def _receive(self) -> None:
        with contextlib.suppress(TimeoutError):
            self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def wait_for(self, field: str, count: int = 1, timeout: float = 10) -> str:
        """The `count`-th message holding the line `field` (reading whatever comes)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.with_field(field)
            if len(found) >= count:
                return found[count - 1][1]
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} {field} in {self.messages}")
            self._receive()

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive()

    def with_field(self, field: str) -> list[tuple[float, str]]:
        return [(at, m) for at, m in self.messages if field in m.splitlines()]


def test_sd_notify_ready_reloading_watchdog_stopping(lab: Lab) -> None:
    listener = NotifyListener(lab.workdir / "notify.sock")
    config = lab.write_config(policy())
    engine = lab.start_engine(config, env={"NOTIFY_SOCKET": str(listener.path),
                                           "WATCHDOG_USEC": "200000"})
    ready = listener.wait_for("READY=1")
    assert f"MAINPID={engine.pid}" in ready.splitlines()
    assert "STATUS=enforce, 4 rules, queue 0" in ready.splitlines()

    listener.wait_for("WATCHDOG=1")
    listener.collect(1.0)
    pings = len(listener.with_field("WATCHDOG=1"))
    assert pings >= 3, f"WATCHDOG=1 every 0.1 s (half of WATCHDOG_USEC), got {pings} in 1 s"

    engine.send_signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING=1")
    assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M)
    listener.wait_for("READY=1", count=2)
    reloaded_at = listener.with_field("READY=1")[1][0]
    assert listener.with_field("RELOADING=1")[0][0] <= reloaded_at

    assert lab.stop_engine(signal.SIGTERM) == 0
    listener.wait_for("STOPPING=1")


def unit_capabilities() -> list[str]:
    unit = (REPO / "systemd" / "nfguard.service").read_text()
    found = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M)
    assert found, "the unit sets CapabilityBoundingSet"
    return found.group(1).split()


def setpriv(capabilities: list[str]) -> tuple[str, ...]:
    """Root with only `capabilities`, as systemd runs the unit (NoNewPrivileges too)."""
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in capabilities)])
    return ("setpriv", "--no-new-privs", "--bounding-set", bounding, "--inh-caps", "-all")


ATTRIBUTE = """
import socket, sys
from nfguard.procs import Attributor
with Attributor() as attributor:
    found = attributor.lookup("udp", socket.AF_INET, sys.argv[1], int(sys.argv[2]), sys.argv[3],
                              9)
    print(found.pid, found.exe, "recorded" if attributor.recorded_owners else "searched",
          attributor.exec_times)
"""


def test_unit_capabilities_are_enough_and_each_is_needed(lab: Lab) -> None:
    capabilities = unit_capabilities()
    assert capabilities == list(CAPABILITIES)
    lab.serve_http(80, 81)

    # The engine, with only the unit's capabilities: installs, binds, decides, and names
    # the process behind another user's flow.
    config = lab.write_config(policy())
    lab.start_engine(config, prefix=setpriv(capabilities))
    assert lab.curl(ALLOWED_V4, 81)[0] == REFUSED
    as_nobody = lab.exec(lab.client, "setpriv", "--reuid", "nobody", "--regid", "nogroup",
                         "--clear-groups", "curl", "-sS", "--max-time", "3",
                         f"http://{ALLOWED_V4}:80/")
    assert as_nobody.stdout == "port 80\n", as_nobody.stderr
    event = lab.wait_for_event(lambda e: e.get("user", {}).get("name") == "nobody")
    assert event["process"]["executable"] == os.path.realpath(shutil.which("curl") or "curl")
    assert event["rule"]["name"] == "lab/web"
    lab.stop_engine()

    # Attribution of another user's socket needs the two /proc capabilities.
    owner = lab.spawn(
        lab.client, "setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
        sys.executable, "-c",
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{CLIENT_V4}', 0)); s.connect(('{SERVER_V4}', 9))\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n",
        stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    port = owner.stdout.readline().strip()
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def attribute(caps: list[str]) -> str:
        result = lab.exec(lab.client, *setpriv(caps), sys.executable, "-c", ATTRIBUTE,
                          CLIENT_V4, port, SERVER_V4, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    named, execs = attribute(capabilities).rsplit(" ", 1)
    assert named.startswith(f"{owner.pid} /"), "pid and executable"
    assert named.endswith(" recorded"), "the socket-owner recorder loads"
    assert execs.startswith("kernel"), "the exec recorder loads"
    for missing in ("CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"):
        fewer = [c for c in capabilities if c != missing]
        assert attribute(fewer).startswith("None None recorded"), f"{missing} is needed"
    # Without CAP_PERFMON the exec tracepoints cannot be attached: process events stand in.
    fewer = [c for c in capabilities if c != "CAP_PERFMON"]
    assert not attribute(fewer).endswith(f" {execs}"), "CAP_PERFMON attaches the exec recorder"
    # Without CAP_BPF the recorder does not load; /proc is searched instead.
    fewer = [c for c in capabilities if c != "CAP_BPF"]
    assert attribute(fewer).startswith(f"{named.rsplit(' ', 1)[0]} searched"), "CAP_BPF loads it"

    # Without CAP_NET_ADMIN the engine cannot start, and says why.
    fewer = [c for c in capabilities if c != "CAP_NET_ADMIN"]
    result = lab.exec(lab.client, *setpriv(fewer), sys.executable, "-m", "nfguard", "run",
                      "--config", str(config), timeout=30)
    assert result.returncode == 1
    assert "nfguard: error:" in result.stderr
