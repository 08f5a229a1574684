"""The e2e tests' policies, built in one place: most are one "everyone" client, the lab's
DNS server allowed, a rule or two, sometimes a deny for the rest. Tests assert on the
"policy/rule" names audit events carry, so the names here are part of the contract."""

from __future__ import annotations

import json
from typing import NamedTuple

LAB_DNS = ("198.18.0.2", "fd00:18::2")  # the lab's DNS server (SERVER_V4, SERVER_V6)
UNNAMED = ""  # a rule without a name: the engine numbers it


class Rule(NamedTuple):
    name: str
    action: str
    to: tuple[str, ...] = ()  # () = anywhere
    ports: tuple[int, ...] = ()  # () = any port
    proto: str = ""  # "" = any protocol

    def toml(self) -> str:
        lines = ["[[policy.rule]]"]
        lines += [f"name = {json.dumps(self.name)}"] if self.name != UNNAMED else []
        lines.append(f"action = {json.dumps(self.action)}")
        lines += [f"to = {json.dumps(list(self.to))}"] if self.to else []
        lines += [f"ports = {json.dumps(list(self.ports))}"] if self.ports else []
        lines += [f"proto = {json.dumps(self.proto)}"] if self.proto else []
        return "\n".join(lines)


class Policy(NamedTuple):
    name: str
    rules: tuple[Rule, ...]

    def toml(self) -> str:
        return "\n\n".join([f"[[policy]]\nname = {json.dumps(self.name)}"]
                           + [rule.toml() for rule in self.rules])


def allow(name: str, *to: str, ports: tuple[int, ...] = (), proto: str = "") -> Rule:
    return Rule(name, "allow", to, ports, proto)


def deny(name: str, *to: str) -> Rule:
    return Rule(name, "deny", to)


def policy(name: str, *rules: Rule) -> Policy:
    return Policy(name, rules)


def dns(*to: str) -> Rule:
    """The rule that lets the host ask the lab's DNS server (or the servers given)."""
    return allow("dns", *(to or LAB_DNS), ports=(53,))


LAB_NETS = ("198.18.0.0/16", "fd00:18::/32")  # every lab address


def web_by_name(*ports: int) -> Policy:
    """Policy "p" of the DNS tests: DNS to any lab address, *.allowed.test on `ports`; the
    names it covers are the names its client may resolve."""
    return policy("p", dns(*LAB_NETS), allow("web", "*.allowed.test", ports=ports))


DENY_REST = policy("deny-rest", deny("everything"))
ALLOWED_NET = policy("p", allow(UNNAMED, "198.18.1.0/24"))  # ALLOWED_V4's network, unnamed


def everyone(*policies: Policy, queries: str = "", name: str = "everyone") -> str:
    """The policy file: one client, "everyone" (or `name`), with `policies` in their order
    (and its own `queries` setting: "any" where a test judges flows, not the names it
    resolves)."""
    client = ["[[client]]", f"name = {json.dumps(name)}",
              f"policies = {json.dumps([p.name for p in policies])}"]
    if queries:
        client.append(f"queries = {json.dumps(queries)}")
    return "\n\n".join(["\n".join(client)] + [p.toml() for p in policies]) + "\n"


def dns_and(rule: Rule, queries: str = "") -> str:
    """Policy "p": the lab's DNS and `rule`, nothing else allowed."""
    return everyone(policy("p", dns(), rule), queries=queries)


def names_policy(*ports: int, dns_to: tuple[str, ...] = LAB_DNS, queries: str = "") -> str:
    """Policy "names": DNS (to `dns_to`) and allowed.test on `ports`, then "deny-rest"."""
    return everyone(policy("names", dns(*dns_to), allow("allowed", "allowed.test", ports=ports)),
                    DENY_REST, queries=queries)
