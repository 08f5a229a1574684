"""The meters in front of the queue, as rendered."""

from __future__ import annotations

import re

import pytest

from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, XT
from nfguard.nft.meters import ANSWERS_PER_SOCKET
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import ONE_TRIP_JUMP, chain_lines, code_lines


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_new_flows_and_dns_answers_are_metered_before_the_queue(path: str) -> None:
    text = render(EngineConfig(), path).nft
    output = chain_lines(text, "output")
    meter = ("ct state new update @new_flows_per_user { meta skuid limit rate over "
             "2000/second burst 4000 packets } counter name new_flows_over_limit drop")
    assert output.index(meter) == output.index(ONE_TRIP_JUMP) - 1
    assert output.index(ONE_TRIP_JUMP) == output.index("jump egress") - 1
    assert chain_lines(text, "answer") == [
        'iifname "lo" fib saddr type != local counter name forged_answers_dropped drop',
        'iifname != "lo" fib saddr . iif oif missing counter name forged_answers_dropped drop',
        "meta nfproto ipv4 update @answers_per_socket4 { ip daddr . th dport limit rate over "
        "200/second burst 400 packets } counter name dns_answers_over_limit drop",
        "meta nfproto ipv6 update @answers_per_socket6 { ip6 daddr . th dport limit rate "
        "over 200/second burst 400 packets } counter name dns_answers_over_limit drop"]
    lines = code_lines(text)
    for name, key in (("new_flows_per_user", "uid"),
                      ("answers_per_socket4", "ipv4_addr . inet_service"),
                      ("answers_per_client6", "ipv6_addr")):
        assert f"set {name} {{ type {key}; flags dynamic; timeout 1m; size 65536; }}" in lines
    comments = text.split("table inet nfguard {")[1].split("\tset ")[0]
    for value in ("2000/s per user (burst 4000", *map(str, ANSWERS_PER_SOCKET)):
        assert value in comments, "the numbers are stated in the ruleset's comments"


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_the_new_flow_rate_is_the_configured_one_and_0_meters_none(path: str) -> None:
    forward = ("docker0",)
    text = render(EngineConfig(new_flows_per_user=25, forward_from=forward), path).nft
    assert ("ct state new update @new_flows_per_user { meta skuid limit rate over 25/second "
            "burst 50 packets } counter name new_flows_over_limit drop") in code_lines(text)
    assert len(re.findall(r"limit rate over 25/second burst 50 packets", text)) == 3
    unmetered = render(EngineConfig(new_flows_per_user=0, forward_from=forward), path).nft
    assert "update @new_flows" not in unmetered
    assert "not metered (engine.new_flows_per_user = 0)" in unmetered
    assert chain_lines(unmetered, "output")[-1] == "jump egress"
