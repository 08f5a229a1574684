"""What uninstall removes of the xt table (the installer's pure part)."""

from __future__ import annotations

import pytest

from nfguard.nft import installer


def _listing(*chains: tuple[str, str | None], rules: tuple[str, ...] = (),
             extra: tuple[dict, ...] = ()) -> list[dict]:
    """A JSON listing of the xt table: (chain name, policy or None for a regular chain)."""
    items: list[dict] = [{"metainfo": {}}, {"table": {"family": "ip", "name": "security"}}]
    for name, policy in chains:
        chain = {"family": "ip", "table": "security", "name": name}
        if policy is not None:
            chain |= {"type": "filter", "hook": name.lower(), "prio": 150, "policy": policy}
        items.append({"chain": chain})
    items += [{"rule": {"family": "ip", "table": "security", "chain": chain}}
              for chain in rules]
    return items + list(extra)


@pytest.mark.parametrize(("listing", "expected"), [
    # What iptables-nft leaves once nfguard's last rule is gone: the whole table goes.
    (_listing(("OUTPUT", "accept"), ("INPUT", "accept")), ["delete table ip security"]),
    # Someone's rule, drop policy or own chain: only the idle accepting base chains go.
    (_listing(("OUTPUT", "accept"), ("INPUT", "accept"), rules=("OUTPUT",)),
     ["delete chain ip security INPUT"]),
    (_listing(("OUTPUT", "drop"), ("INPUT", "accept")), ["delete chain ip security INPUT"]),
    (_listing(("OUTPUT", "accept"), ("mine", None)), ["delete chain ip security OUTPUT"]),
    (_listing(("OUTPUT", "accept"), extra=({"set": {"name": "s"}},)),
     ["delete chain ip security OUTPUT"]),
    (_listing(("OUTPUT", "drop")), []),
])
def test_uninstall_drops_only_the_empty_accepting_chains_of_the_xt_table(
        listing: list[dict], expected: list[str]) -> None:
    assert installer._empty_chain_deletions("ip", listing) == expected
