"""The chains for the containers and VMs behind engine.forward_from, as rendered."""

from __future__ import annotations

import pytest

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, VERDICT_PRIORITY, XT
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import chain_lines, hexmark


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_forwarded_flows_from_the_listed_interfaces_take_the_egress_path(path: str) -> None:
    text = render(EngineConfig(queue=2, forward_from=("docker0", "br-*")), path).nft
    names = '{ "docker0", "br-*" }'
    suffix = " queue num 2" if path == NATIVE else ""
    answer = hexmark(marks.ANSWER)
    pending = (f"ct mark & {hexmark(marks.VERDICT_MASK)} == {hexmark(marks.PENDING)} "
               "jump pending_reply")
    assert chain_lines(text, "forward") == [
        "type filter hook forward priority filter - 10; policy accept;",
        # first: a container's raw socket gets nothing untracked past (ct matches fail)
        f"iifname {names} ct state invalid,untracked counter name untracked_dropped drop",
        # a source not routed back through its interface: another client's address
        f"iifname {names} fib saddr . iif oif missing counter name spoofed_sources_dropped "
        "drop",
        # every DNS query of theirs, whatever its direction (never a "reply")
        f"iifname {names} meta l4proto {{ tcp, udp }} th dport 53 jump dns_query",
        f"ct direction reply oifname {names} {pending}",
        f"ct direction reply oifname {names} ct mark & {hexmark(marks.VERDICT_MASK)} == "
        f"{hexmark(marks.DENY)} meta l4proto tcp jump pending_reply",
        f"meta l4proto {{ tcp, udp }} th sport 53 ct direction reply oifname {names} "
        "jump forwarded_answer",
        f"udp sport 53 ct direction reply oifname {names} meta mark set meta mark | "
        f"{answer}{suffix}",
        f"tcp sport 53 ct direction reply oifname {names} meta mark set meta mark | "
        f"{answer}{suffix}",
        f"ct state new iifname {names} update @new_flows_per_source4 {{ ip saddr limit rate "
        "over 2000/second burst 4000 packets } counter name new_flows_over_limit drop",
        f"ct state new iifname {names} update @new_flows_per_source6 {{ ip6 saddr limit rate "
        "over 2000/second burst 4000 packets } counter name new_flows_over_limit drop",
        # the original direction: the reply direction answers connections made into them
        f"ct direction original iifname {names} jump egress"]
    assert chain_lines(text, "forward_verdict") == [
        f"type filter hook forward priority {VERDICT_PRIORITY}; policy accept;",
        "ct direction reply jump settle_answer",  # answers leave the ct mark alone
        "jump settle"]  # whatever else carries a verdict, with a conntrack entry or not
    assert chain_lines(text, "forwarded_answer") == [
        "fib saddr . iif oif missing counter name forged_answers_dropped drop",
        "meta nfproto ipv4 update @answers_per_client4 { ip daddr limit rate over "
        "500/second burst 1000 packets } counter name dns_answers_over_limit drop",
        "meta nfproto ipv6 update @answers_per_client6 { ip6 daddr limit rate over "
        "500/second burst 1000 packets } counter name dns_answers_over_limit drop"]
    # the host's own flows take the same chain: one flow logic for both
    assert chain_lines(text, "output")[-1] == "jump egress"
    egress = chain_lines(text, "egress")
    assert egress[-1] == "goto to_engine"
    assert chain_lines(text, "to_engine")[-1] == ("queue num 2" if path == NATIVE else
                          f"meta mark set meta mark | {hexmark(marks.QUEUED)}")
    assert marks.ANSWER & ~marks.MASK == 0 and marks.ANSWER & marks.QUEUED
    assert marks.is_answer(marks.ANSWER | 0x5) and not marks.is_answer(marks.QUEUED)
    assert not marks.is_answer(marks.QUEUED | marks.PENDING)


def test_forwarded_traffic_is_left_alone_without_interfaces() -> None:
    for path in (NATIVE, XT):
        ruleset = render(EngineConfig(forward_from=()), path)
        assert "hook forward" not in ruleset.nft
        assert not [rule for rule in ruleset.xt_rules if rule.chain == "FORWARD"]


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_queries_from_forwarded_clients_to_a_resolver_here_are_judged(path: str) -> None:
    """A gateway's clients ask its own dnsmasq, which recurses for them: their queries
    come in on the input hook, from engine.forward_from's interfaces, and are queued as
    a forwarded query is, before anything reads their ct mark; their verdict (a refused
    TCP stream: cut) is settled like an egress packet's. Answers are marked ANSWER."""
    text = render(EngineConfig(forward_from=("lan*", "wg0")), path).nft
    lines = chain_lines(text, "input")
    query = ('iifname { "lan*", "wg0" } meta l4proto { tcp, udp } th dport 53 '
             "ct direction original jump dns_query")
    assert lines.index(query) == 2
    assert chain_lines(text, "input_verdict")[1:] == [
        f"ct direction original meta mark & {hexmark(marks.MASK)} != 0 jump settle",
        "jump settle_answer"]
    assert all(hexmark(marks.ANSWER) in line for line in lines if "sport 53 ct direction "
               "reply meta mark set" in line)
    assert "dport 53 ct direction original" not in render(EngineConfig(forward_from=()),
                                                          path).nft
