"""The ruleset's named counters: declared as used, read back from a listing."""

from __future__ import annotations

import re

import pytest

from nfguard.config import EngineConfig
from nfguard.nft import XT
from nfguard.nft.counters import COUNTERS, parse_counters
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import code_lines


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_every_counter_used_is_declared(fail: str) -> None:
    text = render(EngineConfig(fail=fail, forward_from=("docker0",)), XT).nft
    declared = {line.split()[1] for line in code_lines(text)
                if re.fullmatch(r"counter \w+ \{ \}", line)}
    assert declared == set(COUNTERS)
    used = set(re.findall(r"counter name (\w+)", text))
    assert used == declared - {"fail_closed_dropped" if fail == "open" else "fail_open_passed"}


def test_parse_counters_takes_our_named_counters_only() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "untracked_dropped",
                     "packets": 7, "bytes": 700}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "fail_open_passed",
                     "packets": 0, "bytes": 0}},
        {"counter": {"family": "inet", "table": "other", "name": "untracked_dropped",
                     "packets": 9, "bytes": 9}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "not_ours", "packets": 1}},
        {"counter": {"family": "inet", "table": "nfguard", "name": "link_control_dropped"}},
        "junk",
    ]}
    assert parse_counters(listing) == {"untracked_dropped": 7, "fail_open_passed": 0}
    assert parse_counters({}) == {}
