"""Names in rules: many siblings under one registrable domain collapse into `**.parent`,
never past the registrable domain; and the order rule entries are written in."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

DEFAULT_MIN_SIBLINGS = 3


@lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def registrable_domain(name: str) -> str | None:
    """example.com for a.b.example.com, example.co.uk for x.example.co.uk; None when the
    name is itself a public suffix (com, co.uk, github.io) or under none."""
    return _psl().privatesuffix(name)


def collapse_names(names: Iterable[str], min_siblings: int = DEFAULT_MIN_SIBLINGS
                   ) -> dict[str, list[str]]:
    """Names -> {rule entry: the observed names it covers}.

    Under each registrable domain R, when at least `min_siblings` distinct names lie
    strictly below R, they become one `**.P` where P is their deepest common parent (R or
    below, never above). R itself, if seen, stays literal (`**.R` does not match R).
    min_siblings < 2 turns collapsing off.
    """
    by_domain: dict[str, set[str]] = defaultdict(set)
    entries: dict[str, list[str]] = {}
    for name in set(names):
        domain = registrable_domain(name)
        if domain is None or domain == name or min_siblings < 2:
            entries[name] = [name]
        else:
            by_domain[domain].add(name)
    for domain, below in by_domain.items():
        if len(below) < min_siblings:
            for name in below:
                entries[name] = [name]
            continue
        parent = _common_parent(sorted(below), domain)
        entries.setdefault(f"**.{parent}", []).extend(sorted(below))
    return entries


def _common_parent(names: list[str], domain: str) -> str:
    """The longest label suffix of which every name is a strict subdomain (at least domain)."""
    reversed_labels = [name.split(".")[::-1] for name in names]
    limit = min(len(labels) for labels in reversed_labels) - 1
    common: list[str] = []
    for i in range(limit):
        label = reversed_labels[0][i]
        if any(labels[i] != label for labels in reversed_labels):
            break
        common.append(label)
    parent = ".".join(reversed(common))
    return parent if len(parent) >= len(domain) else domain


def entry_key(entry: str) -> tuple:
    """The order rule entries and names are written in: names by their labels from the
    top-level one (siblings together), then networks by version and address."""
    try:
        network = ipaddress.ip_network(entry)
    except ValueError:
        return (0, tuple(reversed(entry.split("."))), 0)
    return (network.version, (), int(network.network_address))
