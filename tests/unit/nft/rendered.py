"""Reading the rendered ruleset in tests: its rules without comments, one chain's rules."""

from __future__ import annotations

import re

ONE_TRIP_JUMP = "ct state new ct mark & 0x30000000 == 0 meta l4proto tcp jump one_trip"


def hexmark(value: int) -> str:
    return f"0x{value:08x}"


def code_lines(text: str) -> list[str]:
    """Rule lines without comments or blank lines."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def chain_lines(text: str, name: str) -> list[str]:
    found = re.search(rf"chain {name} \{{(.*?)\n\t\}}", text, re.S)
    assert found is not None, f"no chain {name}"
    return code_lines(found.group(1))
