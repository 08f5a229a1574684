"""The one-trip sets and chains, as rendered."""

from __future__ import annotations

import pytest

from nfguard import marks
from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, XT
from nfguard.nft.onetrip import ONE_TRIP_SETS
from nfguard.nft.ruleset import render
from tests.unit.nft.rendered import ONE_TRIP_JUMP, chain_lines


@pytest.mark.parametrize("path", [NATIVE, XT])
def test_a_bare_syn_to_a_one_trip_destination_is_made_pending_by_the_kernel(path: str) -> None:
    """Only the host's own new TCP flows without a verdict, not DNS, only to the sets'
    destinations, and only a SYN that carries nothing: it gets KERNEL_PENDING and passes;
    anything else returns to the engine's path."""
    text = render(EngineConfig(), path).nft
    assert ONE_TRIP_JUMP in chain_lines(text, "output")
    assert "one_trip" not in "".join(chain_lines(text, "egress"))
    lookups = chain_lines(text, "one_trip")
    assert lookups[0] == "tcp dport 53 return"
    assert all(line.endswith("goto one_trip_syn") for line in lookups[1:])
    assert {line.split("@")[1].split()[0] for line in lookups[1:]} == set(ONE_TRIP_SETS)
    syn = chain_lines(text, "one_trip_syn")
    pending = f"ct mark set ct mark & 0x8fffffff | 0x{marks.KERNEL_PENDING:08x} accept"
    settling = [line for line in syn if line.endswith(pending)]
    assert len(settling) == 4 and all(" length " in line and "doff" in line
                                      for line in settling)
    assert syn[:3] == ["tcp flags & (fin | syn | rst | psh | ack | urg) != syn return",
                       "tcp urgptr != 0 return", "@th,100,3 != 0 return"]
    assert marks.KERNEL_PENDING & marks.VERDICT_MASK == marks.PENDING
