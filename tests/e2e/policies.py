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
    private: bool = False  # its names may lead to internal addresses ([names] private)

    def toml(self) -> str:
        lines = ["[[policy.rule]]"]
        lines += [f"name = {json.dumps(self.name)}"] if self.name != UNNAMED else []
        lines.append(f"action = {json.dumps(self.action)}")
        lines += [f"to = {json.dumps(list(self.to))}"] if self.to else []
        lines += [f"ports = {json.dumps(list(self.ports))}"] if self.ports else []
        lines += [f"proto = {json.dumps(self.proto)}"] if self.proto else []
        lines += ["private = true"] if self.private else []
        return "\n".join(lines)


class Policy(NamedTuple):
    name: str
    rules: tuple[Rule, ...]

    def toml(self) -> str:
        return "\n\n".join([f"[[policy]]\nname = {json.dumps(self.name)}"]
                           + [rule.toml() for rule in self.rules])


def allow(name: str, *to: str, ports: tuple[int, ...] = (), proto: str = "",
          private: bool = False) -> Rule:
    return Rule(name, "allow", to, ports, proto, private)


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


# The gateway lab (gateway_lab.py): its dnsmasq asks upstream for the LAN; LAN A (its
# first address, not its spare .200) may reach a.test and the server's port 80 by CIDR,
# LAN B b.test, the server's port 8080 and UDP 9999; the gateway's own root processes only the
# server's port 8081. Clients by source: A by networks, B by one address and a network.
def gateway_policy(dnsmasq: str, server: tuple[str, str],
                   a_names: tuple[str, ...] = ("a.test",)) -> str:
    """LAN A's client may reach `a_names` by name, LAN B's b.test; each a port or two of
    the server by address; the gateway's dnsmasq any resolver."""
    def client(name: str, match: str, *policies: str, extra: str = "") -> str:
        return (f"[[client]]\nname = {json.dumps(name)}\nmatch = {{ {match} }}\n"
                f"policies = {json.dumps(list(policies))}\n{extra}")

    clients = [
        client("gateway-dns", f"exe = {json.dumps(dnsmasq)}", "upstream-dns",
               extra='queries = "any"\n'),
        client("lan-a", 'source = ["198.18.8.0/27", "fd00:18:8::/120"]', "a"),
        client("lan-b", 'source = ["198.18.9.2", "fd00:18:9::/64"], interface = "lan*"', "b"),
        client("gateway-root", 'user = "root"', "gateway-own"),
    ]
    policies = [
        policy("upstream-dns", allow("resolvers", "@resolvers", ports=(53,))),
        policy("a", allow("names", *a_names, ports=(80, 443), proto="tcp"),
               allow("server", *server, ports=(80,), proto="tcp")),
        policy("b", allow("names", "b.test", ports=(80, 443), proto="tcp"),
               allow("server", *server, ports=(8080,), proto="tcp"),
               allow("datagrams", *server, ports=(9999,), proto="udp")),
        policy("gateway-own", allow("server", *server, ports=(8081,), proto="tcp")),
    ]
    return "\n".join(clients) + "\n" + "\n\n".join(p.toml() for p in policies) + "\n"


def names_for_exe(exe: str, *ports: int) -> str:
    """Client "named" (the program `exe`): policy "names" (DNS and allowed.test on `ports`),
    then "deny-rest"; everyone else ("others"): the lab's DNS only, then "deny-rest"."""
    named = ["[[client]]", 'name = "named"', f"match = {{ exe = {json.dumps(exe)} }}",
             'policies = ["names", "deny-rest"]', 'queries = "any"']
    others = ["[[client]]", 'name = "others"', 'policies = ["dns-only", "deny-rest"]',
              'queries = "any"']
    policies = (policy("names", dns(), allow("allowed", "allowed.test", ports=ports)),
                policy("dns-only", dns()), DENY_REST)
    return "\n\n".join(["\n".join(named), "\n".join(others)]
                       + [p.toml() for p in policies]) + "\n"
