"""What an existing policy denies of the audit events: `suggest --policy`, a CI gate.

`denied` evaluates flows against the policy with the real `Engine`, and `refused` queries
with its `QueryJudge`; they report the distinct (who, destination, port, proto) and (who,
name, type) it would deny or refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nfguard.config import EngineConfig
from nfguard.engine import Decision, Engine
from nfguard.policy.internal import Internal, Private, classify
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import Client, PolicySet
from nfguard.policy.resolve import QueryDecision, QueryJudge
from nfguard.suggest.events import Flow, Identity, Query, Resolvers, with_carriers
from nfguard.suggest.names import entry_key
from nfguard.suggest.seen import QUERY_NOUN, Seen
from nfguard.suggest.text import comment_text
from nfguard.wire.ip import TCP, UDP, Packet

_PROTO_NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}


@dataclass(frozen=True, slots=True)
class DeniedFlow:
    identity: Identity
    destination: str
    port: int
    proto: str
    clients: tuple[str, ...]  # which clients of the policy decided ("-" for none)
    rules: tuple[str, ...]  # which rules (or reasons, when no rule matched) denied
    seen: Seen


def flow_packet(flow: Flow) -> Packet:
    address = ipaddress.ip_address(flow.ip)
    number = _PROTO_NUMBERS.get(flow.proto, 255)
    return Packet(address.version, number, "0.0.0.0" if address.version == 4 else "::",
                  flow.ip, 0, flow.port, int(address), 0, 0, 0)


def decide(engine: Engine, flow: Flow) -> Decision:
    names = [(flow.domain, "dns")] if flow.domain is not None else []
    return engine.decide(flow_packet(flow), flow.process, names)


def policy_engine(policies: PolicySet, default: str = "deny",
                  resolvers: Resolvers | None = None, private: str = Private.ALLOW,
                  internal: Callable[[int, int], Internal] = classify) -> Engine:
    return Engine(EngineConfig(mode="enforce", default=default), CompiledPolicySet(policies),
                  resolvers=resolvers, private=private, internal=internal)


def denied(flows: Iterable[Flow], policies: PolicySet, default: str = "deny",
           resolvers: Resolvers | None = None, queries: Iterable[Query] = (),
           private: str = Private.ALLOW, internal: Callable[[int, int], Internal] = classify,
           ) -> list[DeniedFlow]:
    """The distinct (who, destination, port, proto) that `policies` would deny, the flows
    carrying `queries` to their resolver included ([names] private as `private` says, with
    `internal` telling what kind of address one is)."""
    flows = with_carriers(flows, queries)
    engine = policy_engine(policies, default, resolvers, private, internal)
    found: dict[tuple[Identity, str, int, str], tuple[Seen, set[str], set[str]]] = {}
    for flow in flows:
        decision = decide(engine, flow)
        if decision.action != "deny":
            continue
        key = (flow.identity, flow.destination, flow.port, flow.proto)
        seen, clients, rules = found.setdefault(key, (Seen(), set(), set()))
        seen.add(flow)
        clients.add(decision.client or "-")
        if decision.private is not None:  # the rule allowed, the DNS rebinding guard did not
            rules.add(f"reason={decision.reason} ({decision.private} address; "
                      f"rule={decision.rule} has no private = true)")
        else:
            rules.add(f"rule={decision.rule}" if decision.rule else f"reason={decision.reason}")
    out = [DeniedFlow(identity, dest, port, proto, tuple(sorted(clients)), tuple(sorted(rules)),
                      seen)
           for (identity, dest, port, proto), (seen, clients, rules) in found.items()]
    out.sort(key=lambda d: (d.identity.sort_key(), d.destination, d.proto, d.port))
    return out


@dataclass(frozen=True, slots=True)
class RefusedQuery:
    identity: Identity
    name: str
    qtypes: tuple[str, ...]
    clients: tuple[str, ...]  # which clients of the policy decided ("-" for none)
    rules: tuple[str, ...]  # which rules (or reasons, when no rule covered the name) refused
    seen: Seen


def judge_query(engine: Engine, judge: QueryJudge, query: Query) -> QueryDecision:
    """The decision the engine would give the query: its sender's client, then the judge."""
    client: Client | None = engine.client_for(query.carrier.process)
    return judge.decide(client, query.name)


def refused(queries: Iterable[Query], policies: PolicySet, default: str = "deny",
            judged: str = "policy") -> list[RefusedQuery]:
    """The distinct (who, name) whose queries `policies` would refuse ([names] queries =
    `judged`; a client's own `queries` overrides it, as in the engine)."""
    engine = policy_engine(policies, default)
    judge = QueryJudge(engine.policies, judged, default)
    found: dict[tuple[Identity, str], tuple[Seen, set[str], set[str], set[str]]] = {}
    for query in queries:
        decision = judge_query(engine, judge, query)
        if decision.action != "deny":
            continue
        seen, qtypes, clients, rules = found.setdefault(
            (query.identity, query.name), (Seen(), set(), set(), set()))
        seen.add(query)
        qtypes.add(query.qtype)
        clients.add(decision.client or "-")
        rules.add(f"rule={decision.rule}" if decision.rule else f"reason={decision.reason}")
    out = [RefusedQuery(identity, name, tuple(sorted(qtypes)), tuple(sorted(clients)),
                        tuple(sorted(rules)), seen)
           for (identity, name), (seen, qtypes, clients, rules) in found.items()]
    out.sort(key=lambda r: (r.identity.sort_key(), entry_key(r.name)))
    return out


def render_denied(items: list[DeniedFlow], total: int, policy_dir: str, default: str,
                  queries: list[RefusedQuery] | None = None, total_queries: int = 0) -> str:
    flows = sum(d.seen.count for d in items)
    lines = [f"# {len(items)} distinct flows denied by the policy in {comment_text(policy_dir)} "
             f"({flows} of {total} observed flows; engine.default = {default})"]
    for d in items:
        dest = f"[{d.destination}]" if ":" in d.destination else d.destination
        lines.append(comment_text(
            f"deny {d.proto} {dest}:{d.port}  {d.seen.count} flow{'s' * (d.seen.count != 1)}"
            f"  from {d.identity.describe()}  client={','.join(d.clients)} "
            f"{' '.join(d.rules)}"))
    if queries is not None:
        count = sum(r.seen.count for r in queries)
        lines.append(f"# {len(queries)} distinct names refused to their clients ({count} of "
                     f"{total_queries} observed queries): each needs a rule whose `to` or "
                     "`resolve` names it")
        for r in queries:
            lines.append(comment_text(
                f"refuse {'/'.join(r.qtypes)} {r.name or '.'}  {r.seen.describe(*QUERY_NOUN)}"
                f"  from {r.identity.describe()}  client={','.join(r.clients)} "
                f"{' '.join(r.rules)}"))
    return "\n".join(lines) + "\n"
