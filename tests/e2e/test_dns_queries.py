"""Every DNS query judged by its name, end to end: a real resolver that logs what it gets
(dnsmasq --log-queries), dig and raw clients on the host, in a container behind a bridge,
and through a local stub resolver on 127.0.0.53."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.lab import ALLOWED_V4, SERVER_V4, SERVER_V6, SLOWDOWN, Lab
from tests.e2e.policies import dns, policy, web_by_name
from tests.e2e.queries import dig, many

# A refusal comes back at once: well under a second here (the resolver would time out
# after 3), stretched with the test machine's slowdown (the VM's emulated CPU) but short
# of that timeout.
AT_ONCE = min(1.0 * SLOWDOWN, 2.5)

# A local stub (dnsmasq) asks upstream for its users; everyone else resolves by policy "p".
STUB = """
[[client]]
name = "stub"
match = {{ exe = "{stub}" }}
policies = ["upstream"]
queries = "any"

[[client]]
name = "everyone"
policies = ["p"]

"""
POLICY = STUB + policy("upstream", dns("198.18.0.2")).toml() + "\n\n" + web_by_name(80).toml()
DNSMASQ = os.path.realpath(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq")  # as /proc shows it


def config(lab: Lab, **engine: object) -> Path:
    return lab.write_config(POLICY.format(stub=DNSMASQ), **engine)


def query_event(lab: Lab, name: str) -> dict:
    return lab.wait_for_event(lambda e: e.get("dns", {}).get("question", {}).get("name") == name)


def fetch(lab: Lab, name: str, ns: str | None = None) -> int:
    """curl's exit code for http://name/ at the address the lab's DNS gives it."""
    return lab.exec(ns or lab.client, "curl", "-sS", "--max-time", "3", "--resolve",
                    f"{name}:80:{ALLOWED_V4}", f"http://{name}/").returncode


def test_a_refused_name_fails_at_once_and_an_allowed_one_resolves(lab: Lab,
                                                                  dns_log: Path) -> None:
    lab.serve_http(80)
    lab.start_engine(config(lab))
    status, _, elapsed = dig(lab, "nope.attacker.test")
    assert status == "REFUSED" and elapsed < AT_ONCE, (status, elapsed)
    status, _, elapsed = dig(lab, "nope6.attacker.test", server=SERVER_V6)
    assert status == "REFUSED" and elapsed < AT_ONCE, (status, elapsed)
    status, _, elapsed = dig(lab, "nope-tcp.attacker.test", tcp=True)
    assert status != "NOERROR" and elapsed < AT_ONCE, (status, elapsed)  # reset at once
    rcodes, elapsed = many(lab, "udp", [f"n{i}.attacker.test" for i in range(5)])
    assert rcodes == ["REFUSED"] * 5 and elapsed < AT_ONCE, (rcodes, elapsed)
    rcodes, elapsed = many(lab, "tcp", ["p1.attacker.test", "p2.attacker.test"])
    assert "NOERROR" not in rcodes and elapsed < AT_ONCE, (rcodes, elapsed)
    log = dns_log.read_text()
    assert "attacker.test" not in log, log

    status, answers, _ = dig(lab, "www.allowed.test")
    assert (status, answers) == ("NOERROR", [ALLOWED_V4])
    rcodes, _ = many(lab, "udp", ["a.allowed.test", "b.allowed.test"])
    assert rcodes == ["NOERROR", "NOERROR"]
    rcodes, _ = many(lab, "tcp", ["c.allowed.test", "d.allowed.test"])
    assert rcodes == ["NOERROR", "NOERROR"], "pipelined queries each judged and let out"
    assert fetch(lab, "www.allowed.test") == 0, "the allowed name's flow passes"

    refused = query_event(lab, "nope.attacker.test")
    assert refused["event"]["action"] == "deny"
    assert refused["event"]["reason"] == "name_not_allowed"
    assert refused["dns"]["type"] == "query" and refused["dns"]["question"]["type"] == "A"
    assert refused["process"]["executable"].endswith("dig")
    assert refused["nfguard"]["client"] == "everyone"
    allowed = query_event(lab, "www.allowed.test")
    assert (allowed["event"]["action"], allowed["rule"]["name"]) == ("allow", "p/web")


def test_a_containers_queries_are_judged_too(lab: Lab, dns_log: Path) -> None:
    lab.add_container()
    lab.start_engine(config(lab, forward_from=["docker0"]))
    status, _, elapsed = dig(lab, "box.attacker.test", ns=lab.container)
    assert status == "REFUSED" and elapsed < AT_ONCE, (status, elapsed)
    rcodes, elapsed = many(lab, "udp", [f"b{i}.attacker.test" for i in range(5)],
                           ns=lab.container)
    assert rcodes == ["REFUSED"] * 5 and elapsed < AT_ONCE, (rcodes, elapsed)
    status, _, elapsed = dig(lab, "box6.attacker.test", ns=lab.container, server=SERVER_V6)
    assert status == "REFUSED" and elapsed < AT_ONCE, (status, elapsed)
    status, answers, _ = dig(lab, "www.allowed.test", ns=lab.container)
    assert (status, answers) == ("NOERROR", [ALLOWED_V4])
    assert "attacker.test" not in dns_log.read_text()
    event = query_event(lab, "box.attacker.test")
    assert event["observer"]["ingress"]["interface"]["name"] == "docker0"


def test_through_a_local_stub_on_127_0_0_53(lab: Lab, dns_log: Path) -> None:
    """resolv.conf names a stub on loopback: the real client's query is judged on lo, the
    stub's own upstream query by the stub's client."""
    stub = lab.spawn(lab.client, DNSMASQ, "--keep-in-foreground", "--no-resolv",
                     "--no-hosts", "--bind-interfaces", "--user=root", "--pid-file=",
                     "--listen-address=127.0.0.53", f"--server={SERVER_V4}",
                     "--cache-size=0", "--log-facility=-",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.resolv_conf.write_text("nameserver 127.0.0.53\n")
    lab.wait_until(lambda: lab.exec(lab.client, "ss", "-Hlun", "sport", "=", "53")
                   .stdout.count("127.0.0.53") > 0)
    lab.start_engine(lab.write_config(POLICY.format(stub=DNSMASQ),
                                      names={"resolvers": ["127.0.0.53", SERVER_V4]}))
    status, _, elapsed = dig(lab, "stub.attacker.test", server="127.0.0.53")
    assert status == "REFUSED" and elapsed < AT_ONCE, (status, elapsed)
    status, answers, _ = dig(lab, "www.allowed.test", server="127.0.0.53")
    assert (status, answers) == ("NOERROR", [ALLOWED_V4])
    log = dns_log.read_text()
    assert "www.allowed.test" in log and "attacker.test" not in log
    assert query_event(lab, "stub.attacker.test")["event"]["action"] == "deny"
    upstream = lab.wait_for_event(
        lambda e: e.get("dns", {}).get("question", {}).get("name") == "www.allowed.test"
        and e["nfguard"].get("client") == "stub")
    assert upstream["event"]["reason"] == "queries_any"
    assert stub.poll() is None


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_audit_mode_lets_every_query_out_and_records_it(lab: Lab, dns_log: Path,
                                                        transport: str) -> None:
    lab.start_engine(config(lab, mode="audit"))
    status, answers, _ = dig(lab, "seen.attacker.test", tcp=transport == "tcp")
    assert status == "NOERROR" and answers
    assert "seen.attacker.test" in dns_log.read_text()
    event = query_event(lab, "seen.attacker.test")
    assert (event["event"]["action"], event["nfguard"]["verdict"]) == ("deny", "allow")
    assert event["nfguard"]["mode"] == "audit"
