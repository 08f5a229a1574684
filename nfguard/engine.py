"""The decision: pure function of a parsed packet, who sent it, what names it carries, and
the policy. No I/O here; the queue adapter feeds it and acts on what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from nfguard.config import EngineConfig
from nfguard.policy.clients import Process, client_matches
from nfguard.policy.match import DEFAULT, CompiledPolicySet, Destination, destination_names
from nfguard.policy.model import ALLOW, DENY, Client
from nfguard.wire.ip import Packet

# event.reason values
RULE_MATCH = "rule_match"
NO_RULE_MATCH = "no_rule_match"
NO_CLIENT_MATCH = "no_client_match"
UNPARSEABLE = "unparseable_packet"
ENGINE_ERROR = "engine_error"


class Decision(NamedTuple):
    action: str  # what the policy decided: "allow" | "deny"
    verdict: str  # what the kernel is told; differs from action only in audit mode
    mode: str  # "enforce" | "audit"
    reason: str
    evidence: str  # "cidr" | "dns" | "sni" | "host" | "default" ...
    client: str | None = None
    rule: str | None = None  # "policy/rule"
    domain: str | None = None  # the name that decided, if one did


class Engine:
    """Holds the compiled policy and the engine settings; `decide` is the verdict path."""

    def __init__(self, settings: EngineConfig, policies: CompiledPolicySet) -> None:
        self.settings = settings
        self.policies = policies

    def decide(
        self,
        packet: Packet,
        process: Process | None = None,
        names: Iterable[tuple[str, str]] = (),
    ) -> Decision:
        client = self.client_for(process)
        mode = (client.mode if client is not None else None) or self.settings.mode
        if client is None:
            return self._finish(self.settings.default, mode, NO_CLIENT_MATCH, DEFAULT)
        dest = Destination(packet.version, packet.dst_int, packet.transport, packet.dport,
                           destination_names(names))
        found = self.policies.first_match(client.policies, dest)
        if found is None:
            return self._finish(self.settings.default, mode, NO_RULE_MATCH, DEFAULT,
                                client.name)
        return self._finish(found.rule.action, mode, RULE_MATCH, found.evidence, client.name,
                            found.rule.name, found.name)

    def client_for(self, process: Process | None) -> Client | None:
        """The first client whose match table holds for the process (clients are ordered)."""
        for client in self.policies.clients:
            if client_matches(client, process):
                return client
        return None

    def unparseable(self) -> Decision:
        """A packet we cannot read is never let through silently in enforce mode."""
        return self._finish(DENY, self.settings.mode, UNPARSEABLE, DEFAULT)

    def failure(self) -> Decision:
        """An internal error: the configured fail mode decides."""
        action = ALLOW if self.settings.fail == "open" else DENY
        return Decision(action, action, self.settings.mode, ENGINE_ERROR, DEFAULT)

    @staticmethod
    def _finish(
        action: str, mode: str, reason: str, evidence: str, client: str | None = None,
        rule: str | None = None, domain: str | None = None,
    ) -> Decision:
        verdict = ALLOW if mode == "audit" else action
        return Decision(action, verdict, mode, reason, evidence, client, rule, domain)
