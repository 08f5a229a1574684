"""The ruleset's named counters: what each counts, declared in the table, read back from
the kernel for the metrics (what the ruleset dropped or let pass without the engine).
"""

from __future__ import annotations

from nfguard.nft import TABLE

# nft name -> what it counts. The metrics export each as nfguard_<name>_total,
# read from the kernel when scraped (`kernel_counters`).
COUNTERS = {
    "untracked_dropped": "Packets without a conntrack entry (invalid or untracked: raw "
    "sockets, malformed headers) dropped on the egress paths",
    "verdicts_without_conntrack": "Packets the engine gave a verdict that no conntrack entry "
    "could keep, dropped",
    "pending_replies_dropped": "Replies to flows waiting for a name (or cut) that carried "
    "more than a bare TCP segment (payload, options), dropped",
    "link_control_dropped": "Neighbour discovery, MLD and IGMP packets out of their "
    "protocol's shape or over the report rate, dropped",
    "forged_answers_dropped": "DNS answers whose source is not reachable through the "
    "interface they came in on (forged over loopback or another link), dropped",
    "spoofed_sources_dropped": "Packets from engine.forward_from's interfaces whose source "
    "address is not routed back through the interface they came in on (a client claiming "
    "another's address), dropped",
    "dns_answers_over_limit": "DNS answers over the rate per socket (forwarded: per client "
    "address), dropped before the queue",
    "dns_queries_over_limit": "DNS queries over the rate per sending socket, dropped before "
    "the queue",
    "new_flows_over_limit": "New flows over the rate per user (forwarded: per source "
    "address), dropped before the queue",
    "fail_open_passed": "Queued packets that got no verdict (no engine bound, or the queue "
    "full) and passed because engine.fail is open",
    "fail_closed_dropped": "Packets marked for the queue that came back without a verdict "
    "(the queue rule missing) and were dropped because engine.fail is closed",
}


def declarations() -> str:
    """The counters, declared at the top of the table."""
    counters = "\n".join(f"\tcounter {name} {{ }}" for name in COUNTERS)
    return f"\t# Counted in the kernel, exported as nfguard_<name>_total.\n{counters}"


def parse_counters(listing: dict) -> dict[str, int]:
    """Packets per named counter of our table, from `nft -j list counters table inet
    nfguard`; what is not ours or not a counter is skipped."""
    found = {}
    for item in listing.get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if (isinstance(counter, dict) and counter.get("table") == TABLE
                and counter.get("name") in COUNTERS
                and isinstance(counter.get("packets"), int)):
            found[counter["name"]] = counter["packets"]
    return found


class CounterReader:
    """Reads the ruleset's counters from the kernel, for the metrics at scrape time (one
    netlink dump; nothing when the table is not there)."""

    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()

    def __call__(self) -> dict[str, int]:
        rc, listing, _err = self._nft.json_cmd({"nftables": [
            {"list": {"counters": {"family": "inet", "table": TABLE}}}]})
        return parse_counters(listing) if rc == 0 and isinstance(listing, dict) else {}
