"""A two-host lab in network namespaces: a client host running nfguard and a server host,
and, on request, a container behind a bridge on the client host (`add_container`).

Everything stays inside the lab: 198.18.0.0/15 (benchmarking range) and fd00:18::/48 live
only on the veth pair between the two namespaces. Every name is unique per lab, and
`close()` kills every process in both namespaces and deletes them (their nft tables go
with them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from nfguard.metrics.sources import NFQUEUE_PROC, QueueCounters, parse_nfqueue

CLIENT_V4 = "198.18.0.1"
SERVER_V4 = "198.18.0.2"
CLIENT_V6 = "fd00:18::1"
SERVER_V6 = "fd00:18::2"
# Extra server addresses, so policies can allow one destination and deny another.
ALLOWED_V4, OTHER_V4 = "198.18.1.1", "198.18.2.1"
ALLOWED_V6, OTHER_V6 = "fd00:18:1::1", "fd00:18:2::1"
# The container's network: the client host's bridge has .1, the container .2.
BRIDGE_V4, CONTAINER_V4 = "198.18.4.1", "198.18.4.2"
BRIDGE_V6, CONTAINER_V6 = "fd00:18:4::1", "fd00:18:4::2"

_counter = itertools.count()

# Waits for engines, servers and audit events stretch by this factor where everything runs
# slower (the VM test's emulated CPU sets it).
SLOWDOWN = float(os.environ.get("NFGUARD_TEST_SLOWDOWN", "1"))

# HTTP, or HTTPS when given a certificate and key, on a dual-stack socket. HTTP answers
# "port N", HTTPS "https HOST"; the TLS handshake runs in the handler thread.
WEB_SERVER = """
import http.server, socket, ssl, sys
context = None
if len(sys.argv) > 2:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
    def get_request(self):
        sock, addr = self.socket.accept()
        if context is None:
            return sock, addr
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr
    def handle_error(self, request, client_address):
        pass
class Handler(http.server.BaseHTTPRequestHandler):
    def setup(self):
        if context is not None:
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()
    def do_GET(self):
        if context is None:
            body = f"port {self.server.server_port}\\n".encode()
        else:
            body = f"https {self.headers.get('Host', '-')}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
Server(("::", int(sys.argv[1])), Handler).serve_forever()
"""

# Echoes every TCP connection line by line, for flows that outlive a change.
TCP_ECHO = """
import socket, sys, threading
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
def echo(conn):
    with conn:
        while data := conn.recv(2048):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""

# Bound to one address, so replies come from the address the client sent to.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


# Records what reaches the server: every TCP connection accepted (peer and every byte it
# sent), one JSON line each as it closes or at the end of its first 5 s. With a banner it
# talks first, as a server-first protocol would ("run this"), and keeps reading.
TCP_RECORDER = """
import json, socket, sys, threading
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
out, banner, lock = open(sys.argv[3], "a"), sys.argv[4].encode(), threading.Lock()
def record(conn, peer):
    got = b""
    with conn:
        conn.settimeout(5)
        try:
            if banner:
                conn.sendall(banner)
            while data := conn.recv(65536):
                got += data
        except OSError:
            pass
    with lock:
        out.write(json.dumps({"peer": list(peer[:2]), "data": got.hex()}) + "\\n")
        out.flush()
while True:
    threading.Thread(target=record, args=s.accept(), daemon=True).start()
"""

# Records every UDP datagram that reaches the server, one JSON line each; with "echo", it
# also sends each back (a flow with replies is established to conntrack).
UDP_RECORDER = """
import json, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
out, echo = open(sys.argv[3], "a"), sys.argv[4] == "echo"
while True:
    data, peer = s.recvfrom(65536)
    out.write(json.dumps({"peer": list(peer[:2]), "data": data.hex()}) + "\\n")
    out.flush()
    if echo:
        s.sendto(data, peer)
"""

# Captures every frame the server's veth0 receives (AF_PACKET, below netfilter and the
# sockets), one hex line each: what an attacker got onto the wire, whatever it was.
SNIFFER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("veth0", 0))
out = open(sys.argv[1], "a")
while True:
    frame, meta = s.recvfrom(65536)
    if meta[2] != socket.PACKET_OUTGOING:
        out.write(frame.hex() + "\\n")
        out.flush()
"""


@dataclass
class Recording:
    """What a recorder or the sniffer on the server side has seen so far."""

    path: Path

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text().rpartition("\n")[0].splitlines()

    def records(self) -> list[dict]:
        """TCP/UDP recorders: {"peer": [ip, port], "data": bytes} per connection/datagram."""
        return [{**item, "data": bytes.fromhex(item["data"])}
                for item in map(json.loads, self.lines())]

    def contains(self, marker: bytes) -> bool:
        """Whether `marker` arrived anywhere: in a recorded payload or a captured frame."""
        return any(marker in data for data in self.payloads())

    def payloads(self) -> list[bytes]:
        """The recorded payloads, or the captured frames."""
        return [bytes.fromhex(line if line[:1] != "{" else json.loads(line)["data"])
                for line in self.lines()]



def reachable_by_others(*paths: str) -> bool:
    """Whether a user other than root can reach `paths` (each directory above them open to
    others): tests that run nfguard as nobody need the checkout and its venv so, which a
    clone under a mode-0700 directory (/root, mktemp -d) is not."""
    for path in paths:
        for directory in Path(path).resolve().parents:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
    return True


NOT_REACHABLE_BY_NOBODY = (
    "the checkout or its venv sits under a directory others cannot enter (mode 0700, as "
    "/root): clone it where other users can read it, e.g. under /opt or /srv")
NOBODY_CAN_RUN_NFGUARD = reachable_by_others(str(Path(__file__).resolve()), sys.prefix)


def run(
    *argv: str, check: bool = True, timeout: float = 30, **kw: object
) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, timeout=timeout, capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload]


def in_netns(ns: str) -> tuple[str, ...]:
    """The command prefix that runs a program in network namespace `ns`."""
    return ("nsenter", f"--net=/run/netns/{ns}", "--")


def with_resolv_conf(path: Path) -> tuple[str, ...]:
    """The command prefix that runs a program in a mount namespace of its own where
    /etc/resolv.conf is `path` (the engine reads the host's DNS servers there)."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(path))


@dataclass
class Lab:
    workdir: Path
    tag: str = field(default_factory=lambda: f"nfg{os.getpid() % 100000}x{next(_counter)}")
    engine: subprocess.Popen | None = None
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"{self.tag}c"

    @property
    def server(self) -> str:
        return f"{self.tag}s"

    @property
    def container(self) -> str:
        return f"{self.tag}k"

    # -- set-up and tear-down -------------------------------------------------------
    def start(self) -> Self:
        """Both hosts and the link between them. A failure half way removes what was made
        before it goes on: nobody holds a lab that did not start, to close it."""
        try:
            self._link_hosts()
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, ns: str) -> None:
        # Recorded once made: a failed `add` removes what it made, and a name taken by
        # someone else is not ours to delete.
        run("ip", "netns", "add", ns)
        self._namespaces.append(ns)

    def _link_hosts(self) -> None:
        c, s = self.client, self.server
        for ns in (c, s):
            self._add_netns(ns)
        run("ip", "link", "add", "veth0", "netns", c, "type", "veth", "peer", "name", "veth0",
            "netns", s)
        for ns in (c, s):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", "veth0", "up")
        run("ip", "-n", c, "addr", "add", f"{CLIENT_V4}/24", "dev", "veth0")
        run("ip", "-n", s, "addr", "add", f"{SERVER_V4}/24", "dev", "veth0")
        run("ip", "-n", c, "addr", "add", f"{CLIENT_V6}/64", "dev", "veth0", "nodad")
        run("ip", "-n", s, "addr", "add", f"{SERVER_V6}/64", "dev", "veth0", "nodad")
        for extra in (ALLOWED_V4, OTHER_V4):
            run("ip", "-n", s, "addr", "add", f"{extra}/32", "dev", "lo")
            run("ip", "-n", c, "route", "add", f"{extra}/32", "via", SERVER_V4)
        for extra in (ALLOWED_V6, OTHER_V6):
            run("ip", "-n", s, "addr", "add", f"{extra}/128", "dev", "lo", "nodad")
            run("ip", "-n", c, "route", "add", f"{extra}/128", "via", SERVER_V6)
        self.resolv_conf.write_text(f"nameserver {SERVER_V4}\nnameserver {SERVER_V6}\n")

    def add_container(self, bridge: str = "docker0") -> None:
        """A container as Docker sets one up: its own namespace, a veth pair whose host end
        is a port of `bridge` on the client host, which routes (forwards) its traffic. The
        server routes the container's network back (no NAT: the addresses stay readable)."""
        c, s, k = self.client, self.server, self.container
        self._add_netns(k)  # all it makes lives in the namespaces: `close` removes it
        run("ip", "-n", c, "link", "add", bridge, "type", "bridge")
        run("ip", "link", "add", "eth0", "netns", k, "type", "veth", "peer", "name", "port0",
            "netns", c)
        run("ip", "-n", c, "link", "set", "port0", "master", bridge)
        for ns, link in ((c, bridge), (c, "port0"), (k, "lo"), (k, "eth0")):
            run("ip", "-n", ns, "link", "set", link, "up")
        for host, gateway, length, client in ((CONTAINER_V4, BRIDGE_V4, 24, CLIENT_V4),
                                              (CONTAINER_V6, BRIDGE_V6, 64, CLIENT_V6)):
            run("ip", "-n", c, "addr", "add", f"{gateway}/{length}", "dev", bridge, "nodad")
            run("ip", "-n", k, "addr", "add", f"{host}/{length}", "dev", "eth0", "nodad")
            run("ip", "-n", k, "route", "add", "default", "via", gateway)
            network = ipaddress.ip_interface(f"{host}/{length}").network
            run("ip", "-n", s, "route", "add", str(network), "via", client)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self.exec(c, "sysctl", "-qw", f"{key}=1", check=True)

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces; safe to call again, and
        on a lab that started only half way."""
        for proc in self._procs:
            proc.kill()
        while self._namespaces:
            ns = self._namespaces.pop()
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        for proc in self._procs:
            proc.wait(timeout=10)
        self._procs.clear()

    # -- processes in the namespaces ------------------------------------------------
    # nsenter joins only the network namespace. `ip netns exec` would also remount /sys,
    # hiding the cgroup v2 tree from the engine (a host daemon sees it).
    def exec(self, ns: str, *argv: str, check: bool = False, timeout: float = 30,
             **kw: object) -> subprocess.CompletedProcess:
        return run(*in_netns(ns), *argv, check=check, timeout=timeout, **kw)

    def namespaces_left(self) -> list[str]:
        """This lab's namespaces that still exist."""
        listed = run("ip", "netns", "list", check=False).stdout.splitlines()
        ours = self.namespace_names()
        return [line.split()[0] for line in listed if line and line.split()[0] in ours]

    def namespace_names(self) -> tuple[str, ...]:
        """Every namespace this lab may make (a topology that adds hosts extends it)."""
        return (self.client, self.server, self.container)

    def spawn(self, ns: str, *argv: str, **kw: object) -> subprocess.Popen:
        proc = subprocess.Popen([*in_netns(ns), *argv], **kw)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def serve_http(self, *ports: int) -> None:
        for port in ports:
            self.spawn(self.server, sys.executable, "-c", WEB_SERVER, str(port),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports:
            self.wait_listening(port, "tcp")

    def serve_https(self, certfile: Path, keyfile: Path, port: int = 443) -> None:
        self.spawn(self.server, sys.executable, "-c", WEB_SERVER, str(port), str(certfile),
                   str(keyfile), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(port, "tcp")

    def serve_dns(self, *options: str, on: tuple[str, ...] = (SERVER_V4, SERVER_V6)) -> None:
        """dnsmasq on the server's addresses `on` (UDP and TCP 53), answering only from
        its options (`--host-record=...`, `--cname=...`): no upstream, no /etc/hosts.
        `--log-queries` with `--log-facility=FILE` logs every query it receives."""
        self.spawn(self.server, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                   "--no-hosts", "--no-poll", "--bind-interfaces", "--user=root",
                   *(f"--listen-address={address}" for address in on),
                   "--pid-file=",
                   *(() if any(o.startswith("--log-facility") for o in options)
                     else ("--log-facility=-",)), *options,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for address in on:
            self.wait_listening(53, "udp", address=address)
            self.wait_listening(53, "tcp", address=address)

    def dig(self, name: str, qtype: str = "A", tcp: bool = False,
            server: str = SERVER_V4, ns: str | None = None) -> list[str]:
        """The answer section's data (addresses and CNAME targets), from the client (or
        namespace `ns`)."""
        wait = max(2, round(2 * SLOWDOWN))  # the VM's emulated CPU: a forwarder's answer too
        result = self.exec(ns or self.client, "dig", f"@{server}", "+short", "+tries=2",
                           f"+time={wait}", *(("+tcp",) if tcp else ()), name, qtype,
                           timeout=2 * wait + 10)
        return result.stdout.split()

    def serve_udp_echo(self, host: str, port: int) -> None:
        self.spawn(self.server, sys.executable, "-c", UDP_ECHO, host, str(port),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(port, "udp")

    def serve_tcp_echo(self, host: str, port: int) -> None:
        self.spawn(self.server, sys.executable, "-c", TCP_ECHO, host, str(port),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(port, "tcp")

    def record_tcp(self, host: str, port: int, banner: bytes = b"",
                   ns: str | None = None) -> Recording:
        """A TCP listener on the server (or namespace `ns`) that records each connection
        and what it sent (and first sends `banner`, as a server-first protocol does)."""
        recording = Recording(self.workdir / f"tcp-{host}-{port}.jsonl")
        self.spawn(ns or self.server, sys.executable, "-c", TCP_RECORDER, host, str(port),
                   str(recording.path), banner.decode(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(port, "tcp", ns=ns)
        return recording

    def record_udp(self, host: str, port: int, echo: bool = False) -> Recording:
        """A UDP listener on the server that records every datagram it receives (and with
        `echo` sends it back)."""
        recording = Recording(self.workdir / f"udp-{host}-{port}.jsonl")
        self.spawn(self.server, sys.executable, "-c", UDP_RECORDER, host, str(port),
                   str(recording.path), "echo" if echo else "",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(port, "udp")
        return recording

    def sniff(self) -> Recording:
        """Every frame the server's veth0 receives from now on (stop by closing the lab)."""
        recording = Recording(self.workdir / f"sniffed-{next(_counter)}.hex")
        recording.path.touch()
        self.spawn(self.server, sys.executable, "-u", "-c", SNIFFER, str(recording.path),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2 * SLOWDOWN)  # the socket is bound before the test sends
        return recording

    def wait_listening(self, port: int, proto: str, deadline: float = 10,
                       address: str | None = None, ns: str | None = None) -> None:
        """Until something listens on `port` in the server namespace, or `ns` (on
        `address`)."""
        flag = "-ltn" if proto == "tcp" else "-lun"
        local = None if address is None else (
            f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
        end = time.monotonic() + deadline * SLOWDOWN
        while time.monotonic() < end:
            out = self.exec(ns or self.server, "ss", "-H", flag, f"sport = :{port}").stdout
            if out.strip() and (local is None or local in out.split()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {proto}/{address or '*'}:{port} in "
                           f"{ns or self.server}")

    # -- nfguard --------------------------------------------------------------------
    def write_config(self, policy: str, names: dict | None = None, metrics: dict | None = None,
                     containers: dict | None = None, **engine: object) -> Path:
        """The lab's config: metrics off unless given, the control socket in the workdir."""
        rules = self.workdir / "rules"
        rules.mkdir(exist_ok=True)
        (rules / "policy.toml").write_text(textwrap.dedent(policy))
        settings = {"mode": "enforce", "default": "deny", "fail": "closed", "queue": 0,
                    "policy_dir": str(rules), **engine}
        lines = ["[engine]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ["[audit]", f'path = "{self.audit_path}"']
        lines += ["[metrics]"] + [f"{k} = {json.dumps(v)}"
                                  for k, v in (metrics or {"listen": ""}).items()]
        lines += ["[control]", f"socket = {json.dumps(str(self.control_socket))}"]
        for section, values in (("names", names), ("containers", containers)):
            if values:
                lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        config = self.workdir / "nfguard.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    @property
    def resolv_conf(self) -> Path:
        """The client host's /etc/resolv.conf as its engine sees it: the lab's DNS server
        (a test may write another; in place, as it is bind-mounted)."""
        return self.workdir / "resolv.conf"

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.jsonl"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "nfguard.sock"

    @property
    def engine_log(self) -> Path:
        return self.workdir / "engine.log"

    def nfguard(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = self.exec(self.client, sys.executable, "-m", "nfguard", *args)
        if check and result.returncode != 0:
            raise AssertionError(f"nfguard {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start_engine(self, config: Path, prefix: tuple[str, ...] = (),
                     env: dict[str, str] | None = None) -> subprocess.Popen:
        """`nfguard run` in the client namespace (behind `prefix`, e.g. setpriv, with extra
        environment `env`); returns once it has bound the queue, or, with engine.workers
        above 1, once every worker has bound its own."""
        workers = tomllib.loads(config.read_text()).get("engine", {}).get("workers", 1)
        ready = f"all {workers} workers bound" if workers > 1 else "engine bound to queue"
        start_at = self.engine_log.stat().st_size if self.engine_log.exists() else 0
        log = self.engine_log.open("a")
        self.engine = self.spawn(self.client, *with_resolv_conf(self.resolv_conf), *prefix,
                                 sys.executable, "-m", "nfguard", "run",
                                 "--config", str(config), stdout=log, stderr=log,
                                 env={**os.environ, **(env or {})})
        end = time.monotonic() + 20 * SLOWDOWN
        while time.monotonic() < end:
            if ready in self.engine_log.read_text()[start_at:]:
                return self.engine
            if self.engine.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"engine did not start:\n{self.engine_log.read_text()}")

    def stop_engine(self, sig: int = signal.SIGTERM) -> int | None:
        if self.engine is None or self.engine.poll() is not None:
            return None if self.engine is None else self.engine.returncode
        self.engine.send_signal(sig)
        return self.engine.wait(timeout=10 * SLOWDOWN)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        end = time.monotonic() + timeout * SLOWDOWN
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"still not so after {timeout * SLOWDOWN:.0f} s")
            time.sleep(0.05)

    def queue_counters(self) -> dict[int, QueueCounters]:
        """The kernel's NFQUEUE counters in the client namespace, by queue number."""
        return parse_nfqueue(self.exec(self.client, "cat", NFQUEUE_PROC, check=True).stdout)

    def audit_events(self) -> list[dict]:
        """The events written so far. The engine writes whole lines, but a read can meet a
        write in progress: a last line without its newline is not written yet."""
        if not self.audit_path.exists():
            return []
        written = self.audit_path.read_text().rpartition("\n")[0]
        return [json.loads(line) for line in written.splitlines()]

    def wait_for_event(self, predicate, timeout: float = 5) -> dict:  # type: ignore[no-untyped-def]
        """The audit log is flushed once a second; wait for a matching event."""
        end = time.monotonic() + timeout * SLOWDOWN
        while time.monotonic() < end:
            for event in self.audit_events():
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no matching audit event in {self.audit_events()}")

    # -- clients --------------------------------------------------------------------
    def curl(self, host: str, port: int, timeout: float = 3,
             ns: str | None = None) -> tuple[int, str]:
        """(curl exit code, body), from the client host or namespace `ns`. 0 is success,
        7 refused/reset, 28 timed out."""
        url_host = f"[{host}]" if ":" in host else host
        result = self.exec(ns or self.client, "curl", "-sS", "--max-time", str(timeout),
                           f"http://{url_host}:{port}/", timeout=timeout + 10)
        return result.returncode, result.stdout

    def open_conversation(self, host: str, port: int) -> Conversation:
        """A TCP connection from the client namespace that stays open between exchanges."""
        proc = self.spawn(self.client, sys.executable, "-u", "-c", CONVERSATION, host, str(port),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        conversation = Conversation(proc)
        assert conversation.exchange("hello") == "hello", "the connection did not open"
        return conversation

    def udp_echo(self, host: str, port: int, timeout: float = 2, ns: str | None = None) -> str:
        """'ok', 'refused' (ICMP error), or 'timeout'; from the client or namespace `ns`."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
            "socket.SOCK_DGRAM)\n"
            f"s.settimeout({timeout})\n"
            "s.connect((sys.argv[1],int(sys.argv[2])))\n"
            "try:\n s.send(b'ping'); print('ok' if s.recv(64)==b'ping' else 'bad')\n"
            "except TimeoutError: print('timeout')\n"
            "except OSError: print('refused')\n"
        )
        return self.exec(ns or self.client, sys.executable, "-c", code, host, str(port),
                         timeout=timeout + 10).stdout.strip()


# Connects once, then for every line on stdin sends it and prints what came back
# ("timeout" or "error ..." when nothing did).
CONVERSATION = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        print(s.recv(2048).decode().strip() or "closed")
    except TimeoutError:
        print("timeout")
    except OSError as exc:
        print(f"error {exc}")
"""


@dataclass
class Conversation:
    proc: subprocess.Popen

    def exchange(self, text: str) -> str:
        """Send one line over the open connection; what came back."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() or "connection failed"
