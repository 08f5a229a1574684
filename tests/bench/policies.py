"""Generated policies for the benchmarks: a body of N varied rules that real flows must
get past (names, wildcards, CIDRs, ports), placed before the rule under test."""

from __future__ import annotations

import random

BODY = "body"


def body_cidr(rng: random.Random) -> str:
    """A random /24 outside the lab (198.18.0.0/15), loopback and multicast."""
    while True:
        first = rng.randrange(1, 224)
        second = rng.randrange(256)
        if first != 127 and (first, second & 0xFE) != (198, 18):
            return f"{first}.{second}.{rng.randrange(256)}.0/24"


def body_name(index: int) -> str:
    """The exact name rule `index` of the body allows (rules with index % 4 == 1)."""
    return f"svc{index}.corp.example"


def body_rules(count: int, seed: int = 7) -> str:
    """A `[[policy]]` named "body" with `count` rules, one kind in turn: a CIDR denied, an
    exact name allowed on 443, a one-label wildcard allowed on 80 and 443 over TCP, and a
    name plus a CIDR allowed on 8443."""
    rng = random.Random(seed)
    parts = [f'[[policy]]\nname = "{BODY}"\n']
    for i in range(count):
        kind = i % 4
        if kind == 0:
            rule = f'action = "deny"\nto = ["{body_cidr(rng)}"]'
        elif kind == 1:
            rule = f'action = "allow"\nto = ["{body_name(i)}"]\nports = [443]'
        elif kind == 2:
            rule = f'action = "allow"\nto = ["*.app{i}.corp.example"]\nports = [80, 443]\n' \
                   'proto = "tcp"'
        else:
            rule = (f'action = "allow"\nto = ["api{i}.corp.example", "{body_cidr(rng)}"]\n'
                    'ports = [8443]')
        parts.append(f'[[policy.rule]]\nname = "r{i}"\n{rule}\n')
    return "\n".join(parts)


def client(name: str, policies: list[str], exe: str | None = None) -> str:
    match = f'match = {{ exe = "{exe}" }}\n' if exe else ""
    listed = ", ".join(f'"{p}"' for p in policies)
    return f'[[client]]\nname = "{name}"\n{match}policies = [{listed}]\n'


def allow_rule(policy: str, rule: str, to: list[str], ports: list[int] | None = None,
               proto: str | None = None) -> str:
    """A one-rule `[[policy]]`."""
    lines = [f'[[policy]]\nname = "{policy}"\n', f'[[policy.rule]]\nname = "{rule}"',
             'action = "allow"', "to = [" + ", ".join(f'"{t}"' for t in to) + "]"]
    if ports:
        lines.append("ports = [" + ", ".join(map(str, ports)) + "]")
    if proto:
        lines.append(f'proto = "{proto}"')
    return "\n".join(lines) + "\n"


def scale_policy(size: int) -> str:
    """Everyone: the body of `size` rules, then deny all."""
    return (client("everyone", [BODY, "rest"]) + "\n" + body_rules(size) +
            '\n[[policy]]\nname = "rest"\n\n[[policy.rule]]\nname = "all"\naction = "deny"\n')
