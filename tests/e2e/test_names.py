"""Names end to end: DNS answers learnt on INPUT, SNI / Host / QUIC decided on the pending
flow's first bytes, anti-fronting, expiry. Real dnsmasq, real TLS and HTTP servers, curl,
dig and a real QUIC stack (aioquic) in the lab's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.lab import (
    ALLOWED_V4,
    ALLOWED_V6,
    CLIENT_V4,
    OTHER_V4,
    OTHER_V6,
    SERVER_V4,
    SERVER_V6,
    Lab,
)
from tests.e2e.policies import LAB_DNS, names_policy

# denied.test resolves: these tests judge flows (queries: test_dns_queries).
POLICY = names_policy(80, 443, queries="any")

DNS_RECORDS = (
    f"--host-record=allowed.test,{ALLOWED_V4},{ALLOWED_V6}",
    f"--host-record=denied.test,{OTHER_V4},{OTHER_V6}",
    "--cname=alias.test,allowed.test",
)
CUT = {7, 35, 56}  # curl: refused / reset during connect, TLS handshake, or receive

# Sends the ClientHello split across two TCP segments, or re-framed into two TLS records,
# then completes the handshake and one request through ssl.MemoryBIO.
SPLIT_CLIENT = r"""
import socket, ssl, sys, time
host, ip, port, cafile, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname=host)
sock = socket.create_connection((ip, port), timeout=5)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
assert hello[0] == 0x16
if mode == "segments":
    cut = len(hello) // 2
    sock.send(hello[:cut])
    time.sleep(0.3)
    sock.send(hello[cut:])
else:
    body, cut = hello[5:], (len(hello) - 5) // 2
    record = lambda part: hello[:3] + len(part).to_bytes(2, "big") + part
    sock.send(record(body[:cut]) + record(body[cut:]))
def pump():
    if out.pending:
        sock.sendall(out.read())
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed")
    inc.write(data)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        pump()
tls.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
sock.sendall(out.read())
response = b""
while True:
    try:
        chunk = tls.read(65536)
        if not chunk:
            break
        response += chunk
    except ssl.SSLWantReadError:
        try:
            pump()
        except ConnectionError:
            break
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        break
print(response.split(b"\r\n\r\n", 1)[-1].decode().strip())
"""

# One QUIC Initial (a real ClientHello from aioquic) to udp/443; prints whether the
# server's echo came back (it does only if the held datagram was released).
QUIC_CLIENT = r"""
import socket, sys, time
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
name, ip = sys.argv[1], sys.argv[2]
conn = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                                      server_name=name))
conn.connect((ip, 443), now=time.time())
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((ip, 443))
for data, _addr in conn.datagrams_to_send(now=time.time()):
    s.send(data)
try:
    print("echo" if s.recv(4096) else "none")
except OSError:
    print("none")
"""

# An HTTP request head sent in two parts, `pause` seconds apart; prints the status line.
SLOW_HEAD = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n")
time.sleep(float(sys.argv[2]))
s.sendall(b"\r\n")
print(s.recv(4096).split(b"\r\n")[0].decode())
"""

# A DNS server answering every A query with `count` records for the asked name, the first
# the address given: an 8 KB UDP answer, fragmented on the wire, one packet after the
# kernel has reassembled it for conntrack.
BIG_ANSWERS = r"""
import socket, sys
from scapy.layers.dns import DNS, DNSRR
server, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
addresses = [first] + [f"10.77.{i // 250}.{i % 250 + 1}" for i in range(count - 1)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((server, 53))
while True:
    data, peer = s.recvfrom(4096)
    query = DNS(data)
    answer = DNS(id=query.id, qr=1, aa=1, rd=query.rd, ra=1, qd=query.qd,
                 an=[DNSRR(rrname=query.qd.qname, type="A", ttl=300, rdata=a)
                     for a in addresses])
    s.sendto(bytes(answer), peer)
"""


def start(lab: Lab, names: dict | None = None, dns: tuple[str, ...] = ()) -> None:
    lab.serve_dns(*DNS_RECORDS, *dns)
    lab.start_engine(lab.write_config(POLICY, names=names))


def curl_https(lab: Lab, name: str, ip: str, timeout: float = 4) -> tuple[int, str]:
    target = f"[{ip}]" if ":" in ip else ip
    result = lab.exec(lab.client, "curl", "-sS", "--max-time", str(timeout), "--cacert",
                      str(lab.ca), "--resolve", f"{name}:443:{target}",  # type: ignore[attr-defined]
                      f"https://{name}/", timeout=timeout + 10)
    return result.returncode, result.stdout.strip()


def curl_http(lab: Lab, url: str, *options: str, timeout: float = 4) -> tuple[int, str]:
    result = lab.exec(lab.client, "curl", "-sS", "--max-time", str(timeout), *options, url,
                      timeout=timeout + 10)
    return result.returncode, result.stdout.strip()


def events_to(lab: Lab, port: int, proto: str = "tcp") -> list[dict]:
    return [e for e in lab.audit_events()
            if e.get("destination", {}).get("port") == port
            and e.get("network", {}).get("transport") == proto]


def denied_at_its_syn(lab: Lab, ip: str, port: int = 443) -> dict:
    """The event of a flow to an address none of whose DNS names could allow it: decided
    on its SYN (which never left), so no name was presented, none is recorded."""
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("ip") == ip
                               and e.get("destination", {}).get("port") == port
                               and e["event"]["action"] == "deny")
    assert event["rule"]["name"] == "deny-rest/everything"
    assert event["destination"].get("domain") != "allowed.test", event
    return event


def wait_event(lab: Lab, port: int, domain: str, proto: str = "tcp") -> dict:
    return lab.wait_for_event(
        lambda e: e.get("destination", {}).get("port") == port
        and e.get("destination", {}).get("domain") == domain
        and e.get("network", {}).get("transport") == proto)


@pytest.mark.parametrize(("qtype", "ip"), [("A", ALLOWED_V4), ("AAAA", ALLOWED_V6)],
                         ids=["ipv4", "ipv6"])
def test_allowed_sni_passes_and_denied_sni_is_cut(named: Lab, qtype: str, ip: str) -> None:
    start(named)
    assert named.dig("allowed.test", qtype) == [ip]
    assert curl_https(named, "allowed.test", ip) == (0, "https allowed.test")
    event = wait_event(named, 443, "allowed.test")
    assert event["event"]["action"] == "allow"
    assert event["nfguard"]["evidence"] == "sni"
    assert event["rule"]["name"] == "names/allowed"
    other = OTHER_V4 if qtype == "A" else OTHER_V6
    assert named.dig("denied.test", qtype) == [other]
    code, _ = curl_https(named, "denied.test", other)
    assert code in CUT, f"curl exit {code}: a denied name must be cut (28 would be a timeout)"
    denied = wait_event(named, 443, "denied.test")
    assert denied["event"]["action"] == "deny"
    assert denied["rule"]["name"] == "deny-rest/everything"
    time.sleep(1.2)
    # One audit event per flow, at the final decision (none for the pending SYN).
    assert len(events_to(named, 443)) == 2


@pytest.mark.parametrize(("qtype", "ip"), [("A", ALLOWED_V4), ("AAAA", ALLOWED_V6)],
                         ids=["ipv4", "ipv6"])
def test_a_flow_decided_by_sni_costs_two_trips_through_the_queue(
    named: Lab, qtype: str, ip: str
) -> None:
    """The SYN (sender, pending) and the ClientHello (decision) reach the engine; the
    handshake's bare ACK carries no name and passes in the kernel."""
    start(named)
    assert named.dig("allowed.test", qtype) == [ip]
    before = sum(c.id_sequence for c in named.queue_counters().values())
    assert curl_https(named, "allowed.test", ip) == (0, "https allowed.test")
    assert sum(c.id_sequence for c in named.queue_counters().values()) - before == 2


def test_cname_to_an_allowed_name_passes(named: Lab) -> None:
    start(named)
    assert named.dig("alias.test") == ["allowed.test.", ALLOWED_V4]
    assert curl_https(named, "alias.test", ALLOWED_V4) == (0, "https alias.test")
    event = wait_event(named, 443, "allowed.test")
    assert event["event"]["action"] == "allow" and event["nfguard"]["evidence"] == "sni"


def test_bare_address_without_a_name_is_denied(named: Lab) -> None:
    start(named)
    # No DNS answer was seen and a TLS hello to an address carries no SNI: only the
    # address is left, and only name rules allow 443.
    code, _ = curl_http(named, f"https://{ALLOWED_V4}/", "-k")
    assert code in CUT
    event = named.wait_for_event(lambda e: e.get("destination", {}).get("port") == 443)
    assert event["event"]["action"] == "deny"
    assert event["rule"]["name"] == "deny-rest/everything"
    assert "domain" not in event["destination"]


def test_allowed_sni_to_a_denied_address_is_denied_at_its_syn(named: Lab) -> None:
    """Anti-fronting: allowed.test allows only at its own addresses, and none of
    OTHER_V4's names (denied.test) could allow, so the flow does not even wait."""
    start(named)
    named.dig("allowed.test")
    named.dig("denied.test")
    code, _ = curl_https(named, "allowed.test", OTHER_V4)
    assert code in CUT
    event = denied_at_its_syn(named, OTHER_V4)
    assert event["destination"]["domain"] == "denied.test"


def test_denied_sni_to_an_allowed_address_is_denied(named: Lab) -> None:
    start(named)
    named.dig("allowed.test")  # the address stands for allowed.test in the cache
    code, _ = curl_https(named, "denied.test", ALLOWED_V4)
    assert code in CUT, "the presented name decides, not the address's DNS names"
    event = wait_event(named, 443, "denied.test")
    assert event["event"]["action"] == "deny"
    assert event["nfguard"]["evidence"] in ("sni", "cidr")


@pytest.mark.parametrize("mode", ["segments", "records"])
def test_client_hello_split(named: Lab, mode: str) -> None:
    start(named)
    named.dig("allowed.test")
    result = named.exec(named.client, sys.executable, "-c", SPLIT_CLIENT, "allowed.test",
                        ALLOWED_V4, "443", str(named.ca), mode)  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "https allowed.test"
    event = wait_event(named, 443, "allowed.test")
    assert event["event"]["action"] == "allow" and event["nfguard"]["evidence"] == "sni"
    # And split the same way, a denied name is cut.
    named.dig("denied.test")
    result = named.exec(named.client, sys.executable, "-c", SPLIT_CLIENT, "denied.test",
                        OTHER_V4, "443", str(named.ca), mode)  # type: ignore[attr-defined]
    assert result.returncode != 0
    assert wait_event(named, 443, "denied.test")["event"]["action"] == "deny"


def test_names_learnt_from_dns_over_tcp(named: Lab) -> None:
    start(named)
    assert named.dig("allowed.test", tcp=True) == [ALLOWED_V4]
    # Without the binding the flow would be denied on its SYN (anti-fronting).
    assert curl_https(named, "allowed.test", ALLOWED_V4) == (0, "https allowed.test")
    event = wait_event(named, 443, "allowed.test")
    assert event["event"]["reason"] == "rule_match"


def test_without_dns_an_allowed_sni_is_denied_at_its_syn(named: Lab) -> None:
    start(named)
    code, _ = curl_https(named, "allowed.test", ALLOWED_V4)
    assert code in CUT
    denied_at_its_syn(named, ALLOWED_V4)


def test_http_host_and_spoofed_host(named: Lab) -> None:
    start(named)
    named.dig("allowed.test")
    assert curl_http(named, "http://allowed.test/", "--resolve",
                     f"allowed.test:80:{ALLOWED_V4}") == (0, "port 80")
    event = wait_event(named, 80, "allowed.test")
    assert event["event"]["action"] == "allow" and event["nfguard"]["evidence"] == "host"
    code, _ = curl_http(named, f"http://{OTHER_V4}/", "-H", "Host: allowed.test")
    assert code in CUT
    denied_at_its_syn(named, OTHER_V4, 80)  # no name of OTHER_V4 could allow


def test_a_head_left_unfinished_is_denied_at_hello_timeout_and_let_go(named: Lab) -> None:
    """After names.hello_timeout the name is unreadable: the address's DNS names do not
    decide, only address rules (none here: denied). The held segment gets its verdict at
    once, from outside any batch of queued packets: none stays waiting in the kernel's
    queue for the client's next segment to come."""
    start(named, names={"hello_timeout": 0.5})
    assert named.dig("allowed.test") == [ALLOWED_V4]
    client = named.spawn(named.client, sys.executable, "-c", SLOW_HEAD, ALLOWED_V4, "4",
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    event = named.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80)
    assert (event["event"]["action"], event["event"]["reason"],
            event["nfguard"]["unreadable"]) == ("deny", "name_unreadable", "hello_timeout")
    assert client.poll() is None, "the client is still before its second part"
    assert named.queue_counters()[0].length == 0, "the held segment is still queued"
    out, _ = client.communicate(timeout=15)
    assert not out.startswith("HTTP/"), out


def test_binding_expires_after_ttl_and_grace(named: Lab) -> None:
    start(named, names={"grace": 0, "min_ttl": 0}, dns=("--local-ttl=1",))
    named.dig("allowed.test")
    assert curl_https(named, "allowed.test", ALLOWED_V4)[0] == 0
    time.sleep(2.5)
    code, _ = curl_https(named, "allowed.test", ALLOWED_V4)
    assert code in CUT, "the name rule stops allowing once the binding expired"
    denied_at_its_syn(named, ALLOWED_V4)
    named.dig("allowed.test")  # and a fresh answer brings it back
    assert curl_https(named, "allowed.test", ALLOWED_V4)[0] == 0


def test_quic_initial_is_decided_by_its_sni(named: Lab) -> None:
    pytest.importorskip("aioquic")
    named.serve_udp_echo(ALLOWED_V4, 443)
    named.serve_udp_echo(OTHER_V4, 443)
    start(named)
    named.dig("allowed.test")
    named.dig("denied.test")
    allowed = named.exec(named.client, sys.executable, "-c", QUIC_CLIENT, "allowed.test",
                         ALLOWED_V4)
    assert allowed.stdout.strip() == "echo", allowed.stderr
    event = wait_event(named, 443, "allowed.test", "udp")
    assert event["event"]["action"] == "allow" and event["nfguard"]["evidence"] == "quic"
    denied = named.exec(named.client, sys.executable, "-c", QUIC_CLIENT, "denied.test",
                        OTHER_V4)
    assert denied.stdout.strip() == "none", denied.stderr
    assert wait_event(named, 443, "denied.test", "udp")["event"]["action"] == "deny"


def test_uninstall_removes_the_dns_queue(named: Lab) -> None:
    start(named)
    assert named.dig("allowed.test") == [ALLOWED_V4]
    named.stop_engine()
    assert ALLOWED_V4 not in named.dig("allowed.test"), "fail closed: no engine, no DNS"
    listing = named.exec(named.client, "nft", "list", "table", "inet", "nfguard").stdout
    assert "chain input {" in listing and "udp sport 53" in listing
    named.nfguard("uninstall", "--config", str(named.workdir / "nfguard.toml"))
    for tool in ("iptables", "ip6tables"):
        rules = named.exec(named.client, tool, "-t", "security", "-S", "INPUT").stdout
        assert "nfguard" not in rules
    assert named.dig("allowed.test") == [ALLOWED_V4], "answers flow again"


def test_unsolicited_answers_teach_nothing(named: Lab) -> None:
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    start(named)
    forged = bytes(DNS(id=1, qr=1, qd=DNSQR(qname="allowed.test"),
                       an=[DNSRR(rrname="allowed.test", type="A", ttl=300, rdata=OTHER_V4)]))
    sender = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              f"s.bind(('{OTHER_V4}',53))\n"
              "for port in (33333, 5353, 40000):\n"
              f" s.sendto(bytes.fromhex(sys.argv[1]),('{CLIENT_V4}',port))\n")
    assert named.exec(named.server, sys.executable, "-c", sender, forged.hex()).returncode == 0
    time.sleep(0.3)
    code, _ = curl_https(named, "allowed.test", OTHER_V4)
    assert code in CUT, "a forged answer nobody asked for must not make the address allowed"
    denied_at_its_syn(named, OTHER_V4)


@pytest.mark.parametrize(("resolvers", "learnt"), [(["198.18.0.0/31", "127.0.0.0/8"], False),
                                                   (["198.18.0.2", "::1"], True)],
                         ids=["server-not-listed", "server-listed"])
def test_only_answers_from_listed_resolvers_teach_names(named: Lab, resolvers: list[str],
                                                        learnt: bool) -> None:
    """[names] resolvers: the lab's DNS server answers either way, but only a listed
    server's answer lets the name rule allow the address."""
    start(named, names={"resolvers": resolvers})
    assert named.dig("allowed.test") == [ALLOWED_V4], "the answer itself is let through"
    code, _ = curl_https(named, "allowed.test", ALLOWED_V4)
    if learnt:
        assert code == 0
    else:
        assert code in CUT
        denied_at_its_syn(named, ALLOWED_V4)


def test_an_answer_larger_than_4016_bytes_is_learnt_whole(named: Lab) -> None:
    """NetfilterQueue copies at most 4016 bytes of a packet; the engine has the queue copy
    whole packets, so a big answer's names are learnt, not skipped as cut."""
    named.spawn(named.server, sys.executable, "-c", BIG_ANSWERS, SERVER_V4, ALLOWED_V4, "300",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    named.wait_listening(53, "udp")
    named.start_engine(named.write_config(POLICY))
    answer = named.exec(named.client, "dig", f"@{SERVER_V4}", "+short", "+bufsize=65000",
                        "+tries=1", "+time=3", "allowed.test", "A").stdout.split()
    assert len(answer) == 300 and answer[0] == ALLOWED_V4
    assert curl_https(named, "allowed.test", ALLOWED_V4) == (0, "https allowed.test")
    assert wait_event(named, 443, "allowed.test")["event"]["reason"] == "rule_match"


def test_answers_from_a_local_stub_over_loopback_are_learnt(named: Lab) -> None:
    """A host whose resolv.conf names a stub on itself (systemd-resolved's 127.0.0.53)."""
    named.resolv_conf.write_text("nameserver 127.0.0.53\n")
    start(named)
    # A stub resolver on the client host itself, answering over lo (loopback is not
    # filtered on the way out, but its answers are read on the way in).
    named.spawn(named.client, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--no-poll", "--bind-interfaces", "--user=root", "--port=53",
                "--listen-address=127.0.0.53", "--pid-file=", "--log-facility=-",
                f"--host-record=allowed.test,{ALLOWED_V4}",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if named.dig("allowed.test", server="127.0.0.53") == [ALLOWED_V4]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the stub resolver did not answer")
    assert curl_https(named, "allowed.test", ALLOWED_V4) == (0, "https allowed.test")
    assert wait_event(named, 443, "allowed.test")["event"]["reason"] == "rule_match"


def test_by_default_only_the_hosts_resolvers_teach_and_their_changes_are_followed(
        named: Lab) -> None:
    """[names] resolvers = "system": the lab host's resolv.conf names the lab's server. A
    process the policy lets ask another server gets its answer, but the answer cannot
    bind an allowed name to that server's choice of address; once resolv.conf (rewritten,
    as a DHCP client or VPN does) names that server, its answers teach."""
    other_server = names_policy(80, 443, dns_to=(*LAB_DNS, OTHER_V4), queries="any")
    named.serve_dns(*DNS_RECORDS)
    named.serve_dns(f"--host-record=allowed.test,{OTHER_V4}", on=(OTHER_V4,))
    named.start_engine(named.write_config(other_server))
    status = named.nfguard("status", "--config", str(named.workdir / "nfguard.toml")).stdout
    assert f"taught by {SERVER_V4}, {SERVER_V6} (/etc/resolv.conf)" in status, status

    assert named.dig("allowed.test", server=OTHER_V4) == [OTHER_V4], "the answer passes"
    assert curl_https(named, "allowed.test", OTHER_V4)[0] in CUT
    denied_at_its_syn(named, OTHER_V4)

    with named.resolv_conf.open("w") as conf:
        conf.write(f"nameserver {OTHER_V4}\n")
    time.sleep(1.1)  # the engine looks at the file at most once a second
    assert named.dig("allowed.test", server=OTHER_V4) == [OTHER_V4]
    assert curl_https(named, "allowed.test", OTHER_V4) == (0, "https allowed.test")
    assert named.wait_for_event(
        lambda e: e.get("destination", {}).get("port") == 443
        and e["event"]["action"] == "allow")["destination"]["ip"] == OTHER_V4
    status = named.nfguard("status", "--config", str(named.workdir / "nfguard.toml")).stdout
    assert f"taught by {OTHER_V4} (/etc/resolv.conf); 1 from other servers" in status, status


def test_dns_to_the_hosts_resolvers_only_follows_resolv_conf(named: Lab) -> None:
    """`to = ["@resolvers"]`: DNS goes to the servers the lab host's resolv.conf names and
    to no other, and when resolv.conf is rewritten the rule follows it."""
    resolvers_only = names_policy(80, 443, dns_to=("@resolvers",), queries="any")
    named.serve_dns(*DNS_RECORDS)
    named.serve_dns(f"--host-record=allowed.test,{OTHER_V4}", on=(OTHER_V4,))
    named.start_engine(named.write_config(resolvers_only))

    def dns_event(server: str) -> dict:
        return named.wait_for_event(
            lambda e: e.get("destination", {}).get("ip") == server
            and e.get("destination", {}).get("port") == 53)

    assert named.dig("allowed.test") == [ALLOWED_V4]
    assert named.dig("allowed.test", "AAAA", tcp=True, server=SERVER_V6) == [ALLOWED_V6]
    assert dns_event(SERVER_V4)["rule"]["name"] == "names/dns"
    assert OTHER_V4 not in named.dig("allowed.test", server=OTHER_V4), "not a resolver here"
    denied = dns_event(OTHER_V4)
    assert (denied["event"]["action"], denied["rule"]["name"]) == ("deny",
                                                                   "deny-rest/everything")

    with named.resolv_conf.open("w") as conf:
        conf.write(f"nameserver {OTHER_V4}\n")
    time.sleep(1.1)  # the engine looks at the file at most once a second
    assert named.dig("allowed.test", server=OTHER_V4) == [OTHER_V4]
    assert named.wait_for_event(
        lambda e: e.get("destination", {}).get("ip") == OTHER_V4
        and e["event"]["action"] == "allow")["rule"]["name"] == "names/dns"
    assert ALLOWED_V4 not in named.dig("allowed.test"), "no longer a resolver of this host"


# Two queries back to back on one UDP socket, as glibc's resolver sends A and AAAA: the
# second leaves while the first is still in the queue. Prints the socket's port.
A_AND_AAAA = r"""
import socket, sys
from scapy.layers.dns import DNS, DNSQR
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], 53))
for ident, qtype in ((1, "A"), (2, "AAAA")):
    s.send(bytes(DNS(id=ident, rd=1, qd=DNSQR(qname="allowed.test", qtype=qtype))))
answers = {DNS(s.recv(4096)).id for _ in range(2)}
assert answers == {1, 2}, answers
print(s.getsockname()[1])
"""


def test_a_and_aaaa_on_one_socket_are_one_flow_with_one_event(named: Lab) -> None:
    start(named)
    for _ in range(3):
        done = named.exec(named.client, sys.executable, "-c", A_AND_AAAA, SERVER_V4)
        assert done.returncode == 0, done.stderr
        port = int(done.stdout)
        named.wait_for_event(lambda e, port=port: e.get("source", {}).get("port") == port)
        time.sleep(1.2)  # the audit log is flushed once a second
        events = [e for e in named.audit_events()
                  if e.get("source", {}).get("port") == port and "dns" not in e]  # the flow's
        assert len(events) == 1, events
