"""The shapes that pass in the kernel without the engine, as rendered: bare TCP segments,
handshakes, link-local control traffic."""

from __future__ import annotations

import re

import pytest

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, XT
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import chain_lines, code_lines, hexmark


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_pending_flows_pass_in_the_kernel_only_segments_that_carry_nothing(path: str) -> None:
    """No payload (the IP length is the headers'), no IPv4 options or IPv6 extension
    headers, no urgent data or reserved bits, TCP options none or the kernel's timestamp."""
    text = render(EngineConfig(), path).nft
    lines = code_lines(text)
    verdict, pending = hexmark(marks.VERDICT_MASK), hexmark(marks.PENDING)
    jump = f"ct mark & {verdict} == {pending} meta l4proto tcp jump bare"
    assert lines.index(jump) < lines.index(
        f"ct mark & {verdict} == {pending} meta mark set meta mark | {pending}")
    assert chain_lines(text, "bare") == [
        "tcp flags & (syn | urg) != 0 return",
        "tcp urgptr != 0 return",
        "@th,100,3 != 0 return",
        "ip hdrlength 5 ip length 40 tcp doff 5 accept",
        "ip hdrlength 5 ip length 52 tcp doff 8 @th,160,32 0x0101080a accept",
        "ip6 nexthdr tcp ip6 length 20 tcp doff 5 accept",
        "ip6 nexthdr tcp ip6 length 32 tcp doff 8 @th,160,32 0x0101080a accept"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_a_pending_flows_replies_pass_only_bare_or_as_the_handshake(path: str) -> None:
    """The server of a flow that waits for its name cannot push data to the client (a
    server-first protocol's "run this"): on input, and forwarded to a container."""
    text = render(EngineConfig(forward_from=("docker0",)), path).nft
    pending = (f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)} "
               "jump pending_reply")
    lines = chain_lines(text, "input")
    at = lines.index(f"ct direction reply {pending}")
    # and so does the server of a flow cut since (decided at hello_timeout, say)
    cut = (f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.DENY)} meta l4proto tcp "
           "jump pending_reply")
    assert lines[at + 1] == f"ct direction reply {cut}"
    assert f'ct direction reply oifname {{ "docker0" }} {cut}' in chain_lines(text, "forward")
    forward = chain_lines(text, "forward")
    assert f'ct direction reply oifname {{ "docker0" }} {pending}' in forward
    assert forward.index(f'ct direction reply oifname {{ "docker0" }} {pending}') < min(
        i for i, line in enumerate(forward) if "sport 53" in line)
    assert chain_lines(text, "pending_reply") == [
        "meta l4proto { icmp, ipv6-icmp } ct protocol tcp accept",
        "tcp flags & (syn | ack | fin | rst | urg) == syn | ack tcp urgptr 0 "
        "jump bare_handshake",
        "meta l4proto tcp jump bare",
        "counter name pending_replies_dropped drop"]
    seen = set()
    for rule in chain_lines(text, "bare_handshake"):
        v4 = re.fullmatch(r"ip hdrlength 5 ip length (\d+) tcp doff (\d+) accept", rule)
        v6 = re.fullmatch(r"ip6 nexthdr tcp ip6 length (\d+) tcp doff (\d+) accept", rule)
        m = v4 or v6
        assert m, rule
        length, doff = int(m[1]), int(m[2])
        assert length == (20 if v4 else 0) + 4 * doff, "no payload (TCP Fast Open data)"
        seen.add((4 if v4 else 6, doff))
    assert seen == {(f, d) for f in (4, 6) for d in range(5, 16)}


def test_link_local_control_traffic_is_checked_before_anything_else() -> None:
    """Neighbour discovery, MLD and IGMP are not tracked: they go to link_control before the
    untracked drop, and leave only in their protocol's shape."""
    for path in (NATIVE, XT):
        text = render(EngineConfig(), path).nft
        output = chain_lines(text, "output")
        igmp = "ip protocol igmp jump link_control"
        icmpv6 = next(line for line in output if line.startswith("icmpv6 type {"))
        assert icmpv6.endswith("jump link_control")
        for kind in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                     "mld-listener-report", "mld2-listener-report", "mld-listener-done"):
            assert kind in icmpv6
        untracked = output.index("ct state invalid,untracked counter name untracked_dropped "
                                 "drop")
        assert output.index(igmp) < untracked and output.index(icmpv6) < untracked
        control = chain_lines(text, "link_control")
        assert control[-1] == "counter name link_control_dropped drop"
        nd = [line for line in control if line.startswith("icmpv6 type nd-")]
        assert nd and all("ip6 hoplimit 255 ip6 nexthdr ipv6-icmp" in line for line in nd)
        solicit = next(line for line in nd if line.startswith("icmpv6 type nd-neighbor-solicit"))
        # a unicast solicitation to a global address (with payload or not) does not leave
        assert solicit.endswith("ip6 length { 24, 32 } ip6 daddr { fe80::/10, "
                                "ff02::1:ff00:0/104 } accept")
        advert = next(line for line in nd if line.startswith("icmpv6 type nd-neighbor-advert"))
        assert "ip6 length { 24, 32 }" in advert
        mld = next(line for line in control if "mld2-listener-report" in line)
        assert ("ip6 hoplimit 1 ip6 saddr { ::, fe80::/10 } ip6 daddr ff00::/8 limit rate "
                "10/second burst 50 packets accept") in mld
        assert ("ip protocol igmp ip ttl 1 ip hdrlength { 5, 6 } ip daddr 224.0.0.0/4 "
                "limit rate 10/second burst 50 packets accept") in control
