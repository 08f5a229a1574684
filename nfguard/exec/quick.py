"""`--allow DEST` one-liners, written as rules of nfguard's own policy format.

A destination is a name or name pattern (`github.com`, `'**.npmjs.org'`), an address or
network (`10.0.0.0/8`, `2001:db8::/32`, `[2001:db8::1]`), optionally followed by `:PORT`
(or `:LOW-HIGH`) and `/tcp` or `/udp`. Each becomes one allow rule; DNS to the host's
resolvers is allowed beside them, and which names may be resolved is then the DNS query
policy's answer: the names the rules name, nothing else.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from nfguard.policy.model import RESOLVERS
from nfguard.suggest.text import toml_string

QUICK_POLICY = "exec-allow"  # the policy the --allow rules make
ALLOW_ALL_POLICY = "exec-allow-all"  # --allow-all: every destination, recorded
SOURCE = "command line"  # where policy errors in them are said to be

_PORT = re.compile(r"^(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?$")


class Destination(NamedTuple):
    """One `--allow`: `to` (a name pattern or a network), ports, proto (None: both)."""

    to: str
    ports: str | None  # "443" or "8000-8099"; None: any port
    proto: str | None


class AllowError(ValueError):
    """A `--allow` value that names no destination; the message says why."""


def parse_allow(text: str) -> Destination:
    """`host[:port][/proto]`, `cidr[/proto]`, `[v6][:port][/proto]` -> Destination."""
    rest, proto = text.strip(), None
    head, slash, tail = rest.rpartition("/")
    if slash and tail.lower() in ("tcp", "udp"):
        rest, proto = head, tail.lower()
    if not rest:
        raise AllowError(f"--allow {text!r}: no destination")
    ports = None
    if rest.startswith("["):  # [v6 address or network]:port
        inside, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise AllowError(f"--allow {text!r}: unbalanced [ ]")
        rest, ports = inside, (after[1:] or None) if after else None
    elif rest.count(":") == 1:  # host:port or v4:port (a bare v6 address has several)
        rest, _, ports = rest.partition(":")
    if ports is not None:
        _check_ports(text, ports)
    if not _network(rest) and not _name(rest):
        raise AllowError(f"--allow {text!r}: {rest!r} is neither a name pattern nor an "
                         "address or network")
    return Destination(rest, ports, proto)


def _check_ports(text: str, ports: str) -> None:
    found = _PORT.match(ports)
    if not found:
        raise AllowError(f"--allow {text!r}: port {ports!r} is not a number or LOW-HIGH")
    low, high = int(found["low"]), int(found["high"] or found["low"])
    if not 0 < low <= high <= 65535:
        raise AllowError(f"--allow {text!r}: port {ports!r} out of 1-65535")


def _network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _name(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return all(label == "*" or label == "**" or re.fullmatch(r"[A-Za-z0-9_-]{1,63}", label)
               for label in labels) and bool(text.strip("."))


def quick_policy(allows: list[Destination], allow_all: bool = False) -> str:
    """The TOML of the quick policy: DNS to the host's resolvers, then one rule per
    `--allow` (or one rule allowing everything, for `--allow-all`)."""
    lines = [f"[[policy]]\nname = {toml_string(QUICK_POLICY)}\n",
             "[[policy.rule]]\nname = \"resolvers\"\naction = \"allow\"\n"
             f"to = [{toml_string(RESOLVERS)}]\nports = [53]\n"]
    for index, allow in enumerate(allows, 1):
        rule = [f"[[policy.rule]]\nname = \"allow-{index}\"\naction = \"allow\"",
                f"to = [{toml_string(allow.to)}]"]
        if allow.ports is not None:
            rule.append(f"ports = [{_port_item(allow.ports)}]")
        if allow.proto is not None:
            rule.append(f"proto = {toml_string(allow.proto)}")
        lines.append("\n".join(rule) + "\n")
    if allow_all:
        lines.append(f"[[policy]]\nname = {toml_string(ALLOW_ALL_POLICY)}\n\n"
                     "[[policy.rule]]\nname = \"everything\"\naction = \"allow\"\n")
    return "\n".join(lines)


def _port_item(ports: str) -> str:
    return ports if "-" not in ports else toml_string(ports)
