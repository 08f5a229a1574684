"""One trip: a flow decided by the name its client presents crosses the queue once when
its destination is in the kernel's one-trip sets (the SYN is made pending in the kernel),
twice when it is not; a SYN anywhere else is still judged before it leaves; the sets
follow the name cache's expiry and the policy's reloads."""

from __future__ import annotations

import json
import signal
import sys
import time

from tests.e2e.lab import ALLOWED_V4, OTHER_V4, Lab
from tests.e2e.policies import dns, everyone, names_policy, policy

POLICY = names_policy(80, queries="any")
DNS_RECORDS = (f"--host-record=allowed.test,{ALLOWED_V4}",
               f"--host-record=denied.test,{OTHER_V4}")

# One HTTP request with a Host header; prints the status line, or the error met.
GET = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {sys.argv[3]}\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    print(answer.split(b"\r\n")[0].decode() or "closed")
except OSError as exc:
    print(type(exc).__name__)
"""


def get(lab: Lab, address: str, host: str, port: int = 80) -> str:
    return lab.exec(lab.client, sys.executable, "-c", GET, address, str(port), host,
                    timeout=20).stdout.strip()


def elements(lab: Lab, name: str = "onetrip4") -> dict[str, int]:
    """The set's elements ("address . port" or "address") -> seconds left."""
    out = lab.exec(lab.client, "nft", "-j", "list", "set", "inet", "nfguard", name,
                   check=True).stdout
    found = {}
    for item in json.loads(out)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            elem = element.get("elem", element)
            value = elem.get("val", elem) if isinstance(elem, dict) else elem
            key = (" . ".join(map(str, value["concat"])) if isinstance(value, dict)
                   else str(value))
            found[key] = elem.get("expires", elem.get("timeout", 0)) if isinstance(
                elem, dict) else 0
    return found


def queued(lab: Lab) -> int:
    """Packets queue 0 has handed to the engine so far."""
    return lab.queue_counters()[0].id_sequence


def start(lab: Lab, policy_text: str = POLICY, **names: object) -> None:
    lab.serve_dns(*DNS_RECORDS)
    lab.serve_http(80)
    lab.start_engine(lab.write_config(policy_text, names=names or None))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" in elements(lab))


def test_a_name_decided_flow_is_queued_once_when_its_address_is_in_the_set(lab: Lab) -> None:
    start(lab)
    before = queued(lab)
    assert get(lab, ALLOWED_V4, "allowed.test") == "HTTP/1.0 200 OK"
    assert queued(lab) - before == 1, "the SYN went to the engine too"
    event = lab.wait_for_event(lambda e: e.get("destination", {}).get("port") == 80)
    assert (event["event"]["action"], event["rule"]["name"], event["nfguard"]["evidence"]) == (
        "allow", "names/allowed", "host")
    # A name the policy does not allow there, on the same one-trip flow: denied at its
    # first data segment, by the same single trip.
    before = queued(lab)
    assert get(lab, ALLOWED_V4, "denied.test") in ("ConnectionResetError", "closed")
    assert queued(lab) - before == 1


def test_a_destination_missing_from_the_set_costs_a_second_trip_not_a_verdict(
        lab: Lab) -> None:
    """With anti-fronting off, allowed.test may be presented to any address: a flow to
    one the name was never learnt for is name-decided, but not in the set."""
    start(lab, verify=False)
    assert not any(key.startswith(OTHER_V4) for key in elements(lab))
    before = queued(lab)
    assert get(lab, OTHER_V4, "allowed.test") == "HTTP/1.0 200 OK"
    assert queued(lab) - before == 2
    before = queued(lab)
    assert get(lab, OTHER_V4, "denied.test") in ("ConnectionResetError", "closed")
    assert queued(lab) - before == 2


def test_a_syn_to_an_address_no_name_rule_covers_is_judged_before_it_leaves(lab: Lab) -> None:
    start(lab)
    assert lab.dig("denied.test") == [OTHER_V4]  # a name, but none a rule allows
    assert not any(key.startswith(OTHER_V4) for key in elements(lab))
    sniffed = lab.sniff()
    lab.record_tcp(OTHER_V4, 80)
    before = queued(lab)
    assert get(lab, OTHER_V4, "allowed.test") in ("ConnectionRefusedError",
                                                   "ConnectionResetError")
    assert queued(lab) - before == 1  # the SYN, judged and refused
    time.sleep(0.5)
    other = bytes(map(int, OTHER_V4.split(".")))
    syns = [frame for frame in map(bytes.fromhex, sniffed.lines())
            if frame[12:14] == b"\x08\x00" and frame[30:34] == other and frame[23] == 6]
    assert syns == [], "a SYN reached an address no rule could allow"


def test_set_elements_expire_with_the_name_cache(lab: Lab) -> None:
    lab.serve_dns(*DNS_RECORDS, "--local-ttl=3")
    lab.serve_http(80)
    lab.start_engine(lab.write_config(POLICY, names={"min_ttl": 3, "grace": 1}))
    assert lab.dig("allowed.test") == [ALLOWED_V4]
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" in elements(lab))
    left = elements(lab)[f"{ALLOWED_V4} . 80"]
    assert 0 < left <= 4000, left  # milliseconds: TTL 3 s + grace 1 s
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" not in elements(lab), timeout=6)
    # Expired in the name cache too: a flow now is decided at its SYN, by no name.
    assert get(lab, ALLOWED_V4, "allowed.test") in ("ConnectionRefusedError",
                                                     "ConnectionResetError")


def test_a_reload_that_removes_a_name_removes_its_addresses_from_the_set(lab: Lab) -> None:
    start(lab)
    rules = lab.workdir / "rules" / "policy.toml"
    rules.write_text(everyone(policy("names", dns()), queries="any"))
    assert lab.engine is not None
    lab.engine.send_signal(signal.SIGHUP)
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" not in elements(lab))
    rules.write_text(POLICY)
    lab.engine.send_signal(signal.SIGHUP)  # back: rewritten from the name cache
    lab.wait_until(lambda: f"{ALLOWED_V4} . 80" in elements(lab))
