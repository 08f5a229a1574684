"""The decision: pure function of a parsed packet, who sent it, what names it carries, and
the policy. No I/O here; the queue adapter feeds it and acts on what it returns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from nfguard.config import EngineConfig
from nfguard.lru import Memo
from nfguard.policy.clients import Process, match_key
from nfguard.policy.internal import (
    NEVER_BY_NAME,
    PUBLIC,
    Internal,
    Private,
    address_of,
    classify,
)
from nfguard.policy.match import (
    CIDR,
    CompiledPolicySet,
    Destination,
    Evidence,
    RuleMatch,
    destination_names,
)
from nfguard.policy.model import ALLOW, DENY, Action, Client, Mode, Rule
from nfguard.policy.resolve import QueryDecision, QueryJudge
from nfguard.wire.ip import TCP, UDP, Packet

if TYPE_CHECKING:
    from nfguard.exec.transient import Transient, Transients

T = TypeVar("T")


class Reason(StrEnum):
    """Why a flow got its decision (ECS event.reason)."""

    RULE_MATCH = "rule_match"
    NO_RULE_MATCH = "no_rule_match"
    NO_CLIENT_MATCH = "no_client_match"
    UNPARSEABLE = "unparseable_packet"
    ENGINE_ERROR = "engine_error"
    NAME_MISMATCH = "name_mismatch"  # an allowed name presented to an address it does not have
    # The client's name could not be read: only address rules decided, or none and denied.
    NAME_UNREADABLE = "name_unreadable"
    # Only a name allowed it, to an internal address [names] private keeps names from.
    NAME_PRIVATE_ADDRESS = "name_private_address"


RULE_MATCH, NO_RULE_MATCH, NO_CLIENT_MATCH = (Reason.RULE_MATCH, Reason.NO_RULE_MATCH,
                                              Reason.NO_CLIENT_MATCH)
UNPARSEABLE, ENGINE_ERROR = Reason.UNPARSEABLE, Reason.ENGINE_ERROR
NAME_MISMATCH, NAME_UNREADABLE = Reason.NAME_MISMATCH, Reason.NAME_UNREADABLE
NAME_PRIVATE_ADDRESS = Reason.NAME_PRIVATE_ADDRESS
DEFAULT, DNS, SNI, QUIC, HOST = (Evidence.DEFAULT, Evidence.DNS, Evidence.SNI, Evidence.QUIC,
                                 Evidence.HOST)

QUIC_PORT = 443
_NOBODY = object()  # no process asked about yet (see Engine.client_for)
_ACTIONS: dict[str, Action] = {action: action for action in Action}
_MODES: dict[str, Mode] = {mode: mode for mode in Mode}
_EVIDENCE: dict[str, Evidence] = {evidence: evidence for evidence in Evidence}
CLIENT_MEMO_MAX = 4096  # process identities whose client is remembered
DECISION_MEMO_MAX = 1 << 14  # decisions remembered by all they depend on (Engine._decided)
_UNDECIDED = object()  # not remembered yet (a remembered None: the flow waits for its name)


class Decision(NamedTuple):
    action: Action  # what the policy decided
    verdict: Action  # what the kernel is told; differs from action only in audit mode
    mode: Mode
    reason: Reason
    evidence: Evidence
    client: str | None = None
    rule: str | None = None  # "policy/rule"
    domain: str | None = None  # the name that decided, if one did
    unreadable: str | None = None  # why the client's name could not be read, if it could not
    private: str | None = None  # the kind of internal address a name was kept from, if one was


class NamedPlan(NamedTuple):
    """A presented name's decision, but for whether the name resolves to the address: the
    one part the name cache answers live, per flow."""

    checked: str | None  # the name anti-fronting asks about; None: the decision stands
    decision: Decision  # when the name resolves there (or none is checked)
    mismatch: Decision | None  # when it does not: name_mismatch


class Engine:
    """Holds the compiled policy and the engine settings; `decide` is the verdict path.

    The settings and the policy are fixed once an engine is built (a reload builds a new
    one): decisions are remembered by all else they depend on (the client, the address,
    its kind and whether it is a resolver now, the proto, the port, the names), and what
    the name cache says of a presented name is asked again for each flow.
    """

    def __init__(
        self, settings: EngineConfig, policies: CompiledPolicySet, verify: bool = True,
        resolvers: Callable[[str], bool] | None = None,
        private: str = Private.ALLOW,
        internal: Callable[[int, int], Internal] = classify,
    ) -> None:
        self.settings = settings
        self.policies = policies
        # Whether an address is one of the host's DNS resolvers now, for "@resolvers"
        # (resolvers.TrustedServers.serves); None: no address is.
        self.resolvers = resolvers
        self._verify = verify  # anti-fronting ([names] verify)
        # The DNS rebinding guard: [names] private, and what kind of address one is
        # ((version, address) -> Internal: nfguard.hostnets knows this host's networks).
        self.private = Private(private)
        self.internal = internal
        self._clients: Memo[tuple | None, Client | None] = Memo(CLIENT_MEMO_MAX)
        # The last process asked about, and its client: a flow's decisions ask twice, and
        # the attributor hands out one ProcessInfo per process (immutable), so asking by
        # identity spares building its match key again.
        self._last: tuple[object, Client | None] = (_NOBODY, None)
        # `nfguard exec` commands' transient clients, in front of this engine's own (the
        # service's registry, kept across reloads); None: none can exist (a transient's
        # own engine, `explain`, tests).
        self.transients: Transients | None = None
        self._query_judge: QueryJudge | None = None
        # Decisions by their inputs (first trips, then presented names): a busy client
        # opens flow after flow to the same few destinations.
        self._decided: Memo[tuple, Decision | None] = Memo(DECISION_MEMO_MAX)
        self._named: Memo[tuple, NamedPlan] = Memo(DECISION_MEMO_MAX)
        # `resolvers` where an address's being a resolver can matter ("@resolvers" rules).
        self._asked_resolvers = resolvers if policies.uses_resolvers else None

    @property
    def verify(self) -> bool:
        """Anti-fronting ([names] verify); set at construction only, as every setting."""
        return self._verify

    def decide(
        self,
        packet: Packet,
        process: Process | None = None,
        names: Iterable[tuple[str, str]] = (),
    ) -> Decision:
        """The decision from the address and DNS names alone (no waiting for a name)."""
        if not self.transients:  # the usual case, without a call per judge
            decision = self._evaluate(packet, process, names, may_wait=False)
        else:
            decision = self._judged(process, lambda engine: engine._evaluate(
                packet, process, names, may_wait=False), _denies)
        assert decision is not None
        return decision

    def assess(
        self,
        packet: Packet,
        process: Process | None = None,
        names: Iterable[tuple[str, str]] = (),
    ) -> Decision | None:
        """The decision at a flow's first packet, or None: wait for the presented name.

        A flow waits when a name it may present (TLS SNI, HTTP Host on TCP; SNI in a QUIC
        Initial on udp/443) could change what the rules decide on its address and DNS names.
        """
        if not self.transients:
            return self._evaluate(packet, process, names, may_wait=True)
        return self._judged(process, lambda engine: engine._evaluate(
            packet, process, names, may_wait=True), _denies)

    @property
    def matches_sha256(self) -> bool:
        """Whether a client here or of an exec command matches executables by hash."""
        return self.policies.matches_sha256 or bool(
            self.transients and self.transients.matches_sha256)

    def _judged(self, process: Process | None, ask: Callable[[Engine], T | None],
                denies: Callable[[T], bool]) -> T | None:
        """`ask` put to the engines that judge the process: the transient clients whose
        cgroup holds it (deepest first), then this engine's own clients."""
        chain = () if self.transients is None else self.transients.covering(process)
        return _chained(chain, self, ask, denies)

    def _evaluate(
        self, packet: Packet, process: Process | None, names: Iterable[tuple[str, str]],
        may_wait: bool,
    ) -> Decision | None:
        client = self.client_for(process)
        if client is None:
            return self._finish(self.settings.default, self._mode(None), NO_CLIENT_MATCH,
                                DEFAULT)
        if not isinstance(names, tuple):
            names = tuple(names)
        where, resolver = self._where(packet, client)
        key = (may_wait, names, where)
        decision = self._decided.get(key, _UNDECIDED)
        if decision is _UNDECIDED:
            decision = self._decided.put(key, self._evaluated(
                packet, client, self._mode(client), names, resolver, may_wait))
        return decision  # type: ignore[return-value]

    def _where(self, packet: Packet, client: Client) -> tuple[Hashable, bool]:
        """What a remembered decision of `client`'s depends on besides the names: the
        client (it lives as long as this engine and its memos: its identity tells it), the
        destination, its kind now, and whether it is a resolver the client asked; and
        that last alone."""
        version, address = packet.version, packet.dst_int
        ask = self._asked_resolvers
        resolver = ask is not None and ask(packet.dst)
        return (id(client), version, address, packet.proto, packet.dport, resolver,
                self.internal(version, address)), resolver

    def _evaluated(
        self, packet: Packet, client: Client, mode: str, names: tuple[tuple[str, str], ...],
        resolver: bool, may_wait: bool,
    ) -> Decision | None:
        dest = self._destination(packet, destination_names(names) if names else (), resolver)
        if not may_wait:
            found = self.policies.first_match(client.policies, dest)
        else:
            found, pending = self.policies.match_and_pending(client.policies, dest)
            if (pending and (packet.proto == TCP or (packet.proto == UDP
                                                     and packet.dport == QUIC_PORT))
                    and self._name_could_allow(client, dest)):
                return None
        found, refused = self._guard(found, client, dest)
        if refused is not PUBLIC:
            return self._refuse(found, mode, client, refused)
        return self._result(found, mode, client, dest.names)

    def kept_from(self, dest: Destination) -> Internal:
        """The kind of internal address `dest` goes to when [names] private keeps a name
        alone from it, else PUBLIC."""
        return self._kept_from(dest.version, dest.address)

    def keeps_names_from(self, address: str) -> bool:
        """Whether a name alone never leads to `address` (the one-trip sets leave it out, so
        the engine decides a SYN to it before anything leaves)."""
        return self._kept_from(*address_of(address)) is not PUBLIC

    def _kept_from(self, version: int, address: int) -> Internal:
        kind = self.internal(version, address)
        if self.private == Private.ALLOW and kind not in NEVER_BY_NAME:
            return PUBLIC
        return kind

    def _guard(self, found: RuleMatch | None, client: Client,
               dest: Destination) -> tuple[RuleMatch | None, Internal]:
        """The DNS rebinding guard over the rule that matched: (what decides, PUBLIC), or
        (the refused match, the kind of address) when only a name allowed the flow to an
        address the name is kept from. There, names match only rules with `private = true`
        (and deny rules): an allow by the address alone (a CIDR rule naming it, a rule
        without `to`) or by such a rule decides instead, and with none, engine.default
        if it allows (the address alone would get it), else the flow is refused."""
        if (found is None or found.rule.action != ALLOW or found.evidence == CIDR
                or found.rule.private):
            return found, PUBLIC
        kind = self.kept_from(dest)
        if kind is PUBLIC:
            return found, PUBLIC
        inside = self.policies.first_match(client.policies, dest._replace(guarded=True))
        if inside is not None and inside.rule.action == ALLOW:
            return inside, PUBLIC
        if inside is None and self.settings.default == ALLOW:
            return None, PUBLIC
        return found, kind

    def _refuse(self, found: RuleMatch | None, mode: str, client: Client,
                kind: Internal) -> Decision:
        """The decision of a flow the guard refused: the rule it kept, the address's kind."""
        assert found is not None
        return self._finish(DENY, mode, NAME_PRIVATE_ADDRESS, found.evidence, client.name,
                            found.rule.name, found.name, private=kind)

    def _name_could_allow(self, client: Client, dest: Destination) -> bool:
        """Whether some name the client may present could end in an allow (else waiting
        for it would only hand the flow a handshake and the server's bytes for nothing).

        With anti-fronting on, a presented name allows only if it resolves to the address
        (one of its DNS names) or the address is inside the allowing rule's networks; a
        name that cannot be read leaves the address rules. With it off, any name can be
        presented, so any flow a name rule covers may wait; so may every flow when
        engine.default allows what no rule matches. At an address [names] private keeps
        names from, only the names of rules with `private = true` count, either way.
        """
        if self.settings.default == ALLOW:
            return True
        policies = self.policies
        # An internal address a name is kept from: only rules with `private = true` count.
        kept = self.kept_from(dest) is not PUBLIC
        if not self.verify:
            if not kept or policies.private_names_hold(client.policies, dest.proto,
                                                       dest.port):
                return True
            found, _shadowed = policies.address_match(client.policies, dest)
            return found is not None and found.rule.action == ALLOW
        dest = dest._replace(guarded=kept)
        for name, _evidence in dest.names:
            found = policies.first_match(client.policies, dest._replace(names=((name, SNI),)))
            if found is not None and found.rule.action == ALLOW:
                return True
        # The address alone: a rule's networks or "@resolvers" (with names or not) allow
        # whatever name is presented, and whatever cannot be read.
        found, _shadowed = policies.address_match(client.policies, dest)
        return found is not None and found.rule.action == ALLOW

    def _client_and_mode(self, process: Process | None) -> tuple[Client | None, str]:
        """The client deciding for the process, and the mode its flows run in."""
        client = self.client_for(process)
        return client, self._mode(client)

    def _mode(self, client: Client | None) -> str:
        """The mode a client's flows run in (no client: engine.mode)."""
        return (client.mode if client is not None else None) or self.settings.mode

    def decide_named(
        self,
        packet: Packet,
        name: str,
        evidence: str,
        process: Process | None = None,
        resolved: Callable[[str, str], bool] | None = None,
        aliases: Iterable[str] = (),
        resolves: bool | None = None,
    ) -> Decision:
        """The final decision of a pending flow, once the client presented `name`.

        A presented name replaces the DNS names: the rules see it and the address.
        Anti-fronting: an allow matched by the presented name needs the destination to be
        an address this host resolved that name to (`resolved(ip, name)`) or inside one of
        that rule's networks; otherwise the flow is denied with reason name_mismatch.
        `aliases`: names one DNS answer chained to `name` for this address (CNAME
        targets and sources); they stand with the presented name's evidence.
        `resolves`: what `resolved` says of `name` at the address, when the caller asked
        already (then `resolved` is asked about the aliases only).
        """
        if not self.transients:  # the usual case, without a call per judge
            return self._decide_named(packet, name, evidence, process, resolved, aliases,
                                      resolves)
        decision = self._judged(process, lambda engine: engine._decide_named(
            packet, name, evidence, process, resolved, aliases, resolves), _denies)
        assert decision is not None
        return decision

    def _decide_named(
        self, packet: Packet, name: str, evidence: str, process: Process | None,
        resolved: Callable[[str, str], bool] | None, aliases: Iterable[str],
        resolves: bool | None,
    ) -> Decision:
        client = self.client_for(process)
        if client is None:
            return self._finish(self.settings.default, self._mode(None), NO_CLIENT_MATCH,
                                DEFAULT, domain=name)
        if not isinstance(aliases, tuple):
            aliases = tuple(aliases)
        where, resolver = self._where(packet, client)
        key = (name, evidence, aliases, where)
        plan = self._named.get(key)
        if plan is None:
            plan = self._named.put(key, self._plan_named(
                packet, name, evidence, client, self._mode(client), aliases, resolver))
        checked = plan.checked
        if checked is None:
            return plan.decision
        if checked == name and resolves is not None:
            holds = resolves
        else:
            holds = resolved is not None and resolved(packet.dst, checked)
        if holds:
            return plan.decision
        assert plan.mismatch is not None
        return plan.mismatch

    def _plan_named(
        self, packet: Packet, name: str, evidence: str, client: Client, mode: str,
        aliases: tuple[str, ...], resolver: bool,
    ) -> NamedPlan:
        """A presented name's decisions either way the name cache may answer."""
        dest = self._destination(packet, destination_names(
            ((name, evidence), *((alias, evidence) for alias in aliases))), resolver)
        found = self.policies.first_match(client.policies, dest)
        checked = self._fronting_checks(packet, dest, found)
        mismatch = None
        if checked is not None:
            assert found is not None
            mismatch = self._finish(DENY, mode, NAME_MISMATCH, evidence, client.name,
                                    found.rule.name, found.name)
        found, refused = self._guard(found, client, dest)
        if refused is not PUBLIC:
            return NamedPlan(checked, self._refuse(found, mode, client, refused), mismatch)
        if found is not None and found.name is None:
            found = found._replace(name=dest.names[0][0])  # show the presented name
        return NamedPlan(checked, self._result(found, mode, client, dest.names), mismatch)

    def _fronting_checks(self, packet: Packet, dest: Destination,
                         found: RuleMatch | None) -> str | None:
        """Anti-fronting: the name an allow matched by a presented name needs to resolve
        to the address (else it is fronted), or None when the allow stands without (no
        such allow, or the address alone is among the rule's destinations)."""
        if (self.verify and found is not None and found.rule.action == ALLOW
                and found.name is not None and not _inside(packet.dst, dest, found.rule)):
            return found.name
        return None

    def decide_unreadable(self, packet: Packet, why: str,
                          process: Process | None = None) -> Decision:
        """The final decision of a pending flow whose name cannot be known (`why`).

        The address's DNS names never decide here: on a shared address they belong to
        others. Only rules that match the address alone (networks, "@resolvers", no `to`)
        decide, and an allow among them only if no deny rule with names stands before it
        (the unread name might be that rule's); otherwise the flow is denied, whatever
        engine.default says.
        """
        decision = self._judged(process, lambda engine: engine._decide_unreadable(
            packet, why, process), _denies)
        assert decision is not None
        return decision

    def _decide_unreadable(self, packet: Packet, why: str, process: Process | None) -> Decision:
        client, mode = self._client_and_mode(process)
        if client is None:
            return self._finish(self.settings.default, mode, NO_CLIENT_MATCH, DEFAULT,
                                unreadable=why)
        found, shadowed = self.policies.address_match(client.policies,
                                                      self.destination(packet, ()))
        if found is None or (shadowed and found.rule.action == ALLOW):
            return self._finish(DENY, mode, NAME_UNREADABLE, Evidence.UNREADABLE,
                                client.name, unreadable=why)
        return self._finish(found.rule.action, mode, NAME_UNREADABLE, found.evidence,
                            client.name, found.rule.name, unreadable=why)

    def _result(
        self, found: RuleMatch | None, mode: str, client: Client,
        names: tuple[tuple[str, str], ...],
    ) -> Decision:
        if found is None:
            return self._finish(self.settings.default, mode, NO_RULE_MATCH, DEFAULT,
                                client.name, domain=_some_name(names))
        return self._finish(found.rule.action, mode, RULE_MATCH, found.evidence, client.name,
                            found.rule.name, found.name or _some_name(names))

    def destination(self, packet: Packet, names: tuple[tuple[str, str], ...]) -> Destination:
        """What the rules see of where a flow goes (`names` normalised)."""
        ask = self._asked_resolvers
        return self._destination(packet, names, ask is not None and ask(packet.dst))

    @staticmethod
    def _destination(packet: Packet, names: tuple[tuple[str, str], ...],
                     resolver: bool) -> Destination:
        return Destination(packet.version, packet.dst_int, packet.transport, packet.dport,
                           names, resolver)

    def client_for(self, process: Process | None) -> Client | None:
        """The first client whose match table holds for the process (clients are ordered).
        Remembered per process identity: one busy program opens flow after flow."""
        last, client = self._last
        if process is last:
            return client
        key = None if process is None else match_key(process)
        if key in self._clients:
            client = self._clients[key]
        else:
            client = self._clients.put(key, self.policies.client_index.first(process))
        self._last = (process, client)
        return client

    def judge_query(self, process: Process | None, name: str,
                    queries: str) -> tuple[QueryDecision, str]:
        """Whether the process may resolve `name`, and the mode that decision runs in
        (`queries`: [names] queries)."""
        answer = self._judged(process, lambda engine: engine._judge_query(
            process, name, queries), _query_denies)
        assert answer is not None
        return answer

    def enforces(self, process: Process | None) -> bool:
        """Whether the process's flows are enforced (by any judge of it that decides)."""
        mode = self._judged(process, lambda engine: engine._client_and_mode(process)[1],
                            lambda mode: mode == Mode.ENFORCE)
        return mode == Mode.ENFORCE

    def _judge_query(self, process: Process | None, name: str,
                     queries: str) -> tuple[QueryDecision, str]:
        client, mode = self._client_and_mode(process)
        return self.query_judge(queries).decide(client, name), mode

    def query_judge(self, queries: str) -> QueryJudge:
        """The judge of DNS queries under this engine's policy ([names] queries)."""
        judge = self._query_judge
        if judge is None or judge.queries != queries:
            judge = self._query_judge = QueryJudge(self.policies, queries,
                                                   self.settings.default)
        return judge

    def unparseable(self) -> Decision:
        """A packet we cannot read is never let through silently in enforce mode."""
        return self._finish(DENY, self.settings.mode, UNPARSEABLE, DEFAULT)

    def failure(self) -> Decision:
        """An internal error: the configured fail mode decides."""
        action = ALLOW if self.settings.fail == "open" else DENY
        return Decision(action, action, Mode(self.settings.mode), ENGINE_ERROR, DEFAULT)

    @staticmethod
    def _finish(
        action: str, mode: str, reason: Reason, evidence: str, client: str | None = None,
        rule: str | None = None, domain: str | None = None, unreadable: str | None = None,
        private: str | None = None,
    ) -> Decision:
        # By dict, not by calling the enums: members and their strings hash alike, and an
        # enum call costs more than the rest of the decision's bookkeeping.
        chosen = _ACTIONS[action]
        verdict = ALLOW if mode == Mode.AUDIT else chosen
        return Decision(chosen, verdict, _MODES[mode], reason, _EVIDENCE[evidence],
                        client, rule, domain, unreadable, private)


def _chained(chain: Sequence[Transient], host: Engine, ask: Callable[[Engine], T | None],
             denies: Callable[[T], bool]) -> T | None:
    """The answer of the first judge in `chain`, or of `host` past its end. A stacked judge
    (a non-root requester's) only adds to the rest: whichever denies decides, and a flow
    waits (None) if one of them waits for its name and neither denies."""
    if not chain:
        return ask(host)
    first = chain[0]
    own = ask(first.engine)
    if not first.stacked or (own is not None and denies(own)):
        return own
    rest = _chained(chain[1:], host, ask, denies)
    if rest is None or denies(rest):
        return rest
    return own


def _denies(decision: Decision) -> bool:
    return decision.verdict == DENY


def _query_denies(answer: tuple[QueryDecision, str]) -> bool:
    decision, mode = answer
    return decision.action == DENY and mode == Mode.ENFORCE


def _some_name(names: tuple[tuple[str, str], ...]) -> str | None:
    """A name to show for the destination when none decided (the smallest, for stability)."""
    return min(name for name, _evidence in names) if names else None


def _inside(ip: str, dest: Destination, rule: Rule) -> bool:
    """Whether the address alone is among the rule's destinations."""
    if rule.resolvers and dest.resolver:
        return True
    if not rule.networks:
        return False
    address = ipaddress.ip_address(ip)
    return any(network.contains(address) for network in rule.networks)
