"""Policy files (TOML) -> validated `PolicySet`, with every problem named by file and line."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfguard.policy import document
from nfguard.policy.collector import collector_paused
from nfguard.policy.model import (
    ACTIONS,
    IMAGE_ID_PREFIX,
    MATCH_KEYS,
    MODES,
    PROTOS,
    RESOLVERS,
    Client,
    Location,
    Network,
    Policy,
    PolicySet,
    PortRange,
    Rule,
)
from nfguard.policy.networks import parse_network
from nfguard.policy.patterns import NamePattern, is_pattern_text, parse_name_pattern
from nfguard.policy.resolve import QUERIES
from nfguard.policy.source import SourceMap

_TOP_KEYS = ("client", "policy")
_CLIENT_KEYS = ("name", "match", "policies", "mode", "queries")
_POLICY_KEYS = ("name", "rule")
_RULE_KEYS = ("name", "action", "to", "resolve", "ports", "proto", "private")
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_AT_END = re.compile(r"\(at end of document\)")


@dataclass(frozen=True, slots=True)
class Problem:
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PolicyError(Exception):
    """One or more problems in the policy files; nothing of them was applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def parse_toml(text: str, path: str) -> dict[str, Any]:
    """TOML, with its syntax errors turned into a Problem that names file and line."""
    try:
        return document.loads(text)
    except document.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        line = int(found.group(1)) if found else max(1, len(text.splitlines()))
        message = _AT_END.sub("", _TOML_LINE.sub("", str(exc))).strip()
        raise PolicyError([Problem(Location(path, line), f"invalid TOML: {message}")]) from exc


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Load every `*.toml` in `directory`, in file-name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([Problem(Location(str(directory), 0), "policy directory not found")])
    return load_policy_files(sorted(directory.glob("*.toml")))


def load_policy_files(paths: Iterable[str | Path]) -> PolicySet:
    documents = []
    problems: list[Problem] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(Location(str(path), 0), f"cannot read: {exc}"))
            continue
        documents.append((str(path), text))
    if problems:
        raise PolicyError(problems)
    return parse_policy_texts(documents)


def parse_policy_texts(documents: Iterable[tuple[str, str]]) -> PolicySet:
    """Parse (path, text) pairs as one policy set: names are global across files."""
    builder = _Builder()
    paths = []
    with collector_paused():
        for path, text in documents:
            paths.append(path)
            builder.add_document(path, text)
        return builder.finish(tuple(paths))


class _Builder:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.clients: list[Client] = []
        self.client_names: set[str] = set()  # a gateway may have a client per host
        self.policies: dict[str, Policy] = {}
        # (client, its index in its file, that file's map) for the reference check at the end.
        self.references: list[tuple[Client, int, SourceMap]] = []
        self.port_sets: dict[frozenset[int], frozenset[int]] = {}

    def add_document(self, path: str, text: str) -> None:
        try:
            document = parse_toml(text, path)
        except PolicyError as exc:
            self.problems.extend(exc.problems)
            return
        source = _Source(path, SourceMap(text), self.problems)
        self._unknown_keys(source, (), document, _TOP_KEYS, "top level")
        for index, raw in enumerate(source.array_of_tables(document, "client", ())):
            self._client(source, index, raw)
        for index, raw in enumerate(source.array_of_tables(document, "policy", ())):
            self._policy(source, index, raw)

    def finish(self, paths: tuple[str, ...]) -> PolicySet:
        for client, index, source_map in self.references:
            for name in client.policies:
                if name not in self.policies:
                    line = source_map.line(("client", index, "policies"), name)
                    self.problems.append(Problem(
                        Location(client.location.path, line),
                        f"client {client.name!r} references policy {name!r}, "
                        "which no policy file defines",
                    ))
        if self.problems:
            raise PolicyError(self.problems)
        return PolicySet(tuple(self.clients), dict(self.policies), paths)

    def _unknown_keys(
        self, source: _Source, path: tuple, table: dict, allowed: tuple[str, ...], what: str
    ) -> None:
        for key in table:
            if key not in allowed:
                source.problem((*path, key), f"unknown key {key!r} in {what} "
                               f"(allowed: {', '.join(allowed)})")

    def _client(self, source: _Source, index: int, raw: dict[str, Any]) -> None:
        path = ("client", index)
        self._unknown_keys(source, path, raw, _CLIENT_KEYS, "[[client]]")
        name = source.required_str(raw, path, "name")
        if name is None:
            return
        if name in self.client_names:
            source.problem((*path, "name"), f"duplicate client name {name!r}")
        match, sources = self._match(source, path, raw.get("match", {}))
        policies = source.str_list(raw, path, "policies", required=True)
        mode = source.choice(raw, path, "mode", MODES)
        queries = source.choice(raw, path, "queries", QUERIES)
        if not policies:
            return
        client = Client(name, match, tuple(policies), mode, source.location(path), queries,
                        sources)
        self.clients.append(client)
        self.client_names.add(name)
        self.references.append((client, index, source.map))

    def _match(self, source: _Source, path: tuple, raw: Any
               ) -> tuple[tuple[tuple[str, str], ...], tuple[Network, ...]]:
        """The match table's (key, value) pairs, and its `source` networks."""
        if not isinstance(raw, dict):
            source.problem((*path, "match"), 'match must be a table: { exe = "/usr/bin/git" }')
            return (), ()
        pairs = []
        sources: tuple[Network, ...] = ()
        for key, value in raw.items():
            if key not in MATCH_KEYS:
                source.problem((*path, "match", key), f"unknown match key {key!r} "
                               f"(allowed: {', '.join(MATCH_KEYS)})", needle=key)
                continue
            if key == "source":
                sources = self._sources(source, path, value)
                continue
            if isinstance(value, int) and not isinstance(value, bool) and key == "user":
                value = str(value)
            if not isinstance(value, str) or not value:
                source.problem((*path, "match", key), f"match.{key} must be a non-empty string",
                               needle=key)
                continue
            if key == "sha256" and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
                source.problem((*path, "match", key), "match.sha256 must be 64 hex digits",
                               needle=key)
                continue
            if key == "image" and value.lower().startswith(IMAGE_ID_PREFIX):
                value = value.lower()
                if not re.fullmatch(rf"{IMAGE_ID_PREFIX}[0-9a-f]{{1,64}}\*?", value):
                    source.problem((*path, "match", key), "match.image by id must be "
                                   "sha256: and hex digits (all 64, or a prefix and *)",
                                   needle=key)
                    continue
            pairs.append((key, value.lower() if key == "sha256" else value))
        return tuple(pairs), sources

    def _policy(self, source: _Source, index: int, raw: dict[str, Any]) -> None:
        path = ("policy", index)
        self._unknown_keys(source, path, raw, _POLICY_KEYS, "[[policy]]")
        name = source.required_str(raw, path, "name")
        if name is None:
            return
        if name in self.policies:
            first = self.policies[name].location
            source.problem((*path, "name"), f"duplicate policy name {name!r} "
                           f"(first defined at {first})")
            return
        rules = []
        seen: set[str] = set()
        for rule_index, raw_rule in enumerate(source.array_of_tables(raw, "rule", path)):
            rule = self._rule(source, name, (*path, "rule", rule_index), rule_index, raw_rule)
            if rule is None:
                continue
            if rule.name in seen:
                source.problem((*path, "rule", rule_index, "name"),
                               f"duplicate rule name {rule.name!r} in policy {name!r}")
            seen.add(rule.name)
            rules.append(rule)
        self.policies[name] = Policy(name, tuple(rules), source.location(path))

    def _rule(
        self, source: _Source, policy: str, path: tuple, index: int, raw: dict[str, Any]
    ) -> Rule | None:
        self._unknown_keys(source, path, raw, _RULE_KEYS, "[[policy.rule]]")
        before = len(self.problems)
        label = source.optional_str(raw, path, "name")
        if label is not None and "/" in label:
            source.problem((*path, "name"), "a rule name may not contain '/'")
        action = source.choice(raw, path, "action", ACTIONS, required=True)
        networks, names, resolvers = self._destinations(source, path, raw)
        resolve = self._resolve(source, path, raw)
        ports, ranges = self._ports(source, path, raw)
        proto = source.choice(raw, path, "proto", PROTOS)
        if resolve and "to" not in raw:
            for key in ("ports", "proto"):
                if key in raw:
                    source.problem((*path, key), f"{key} does not apply to a rule with "
                                   "'resolve' and no 'to': it allows or denies no connection")
        private = self._private(source, path, raw, action, names)
        if len(self.problems) > before or action is None:
            return None
        name = f"{policy}/{label}" if label is not None else f"{policy}/#{index + 1}"
        return Rule(policy, name, action, networks, names, ports, ranges, proto,
                    source.location(path), resolvers, resolve, private)

    @staticmethod
    def _private(source: _Source, path: tuple, raw: dict[str, Any], action: str | None,
                 names: tuple[NamePattern, ...]) -> bool:
        """`private = true`: the rule's names may lead to internal addresses. Only an allow
        rule with names in `to` has any: elsewhere the key would promise what it cannot."""
        if "private" not in raw:
            return False
        value = raw["private"]
        if not isinstance(value, bool):
            source.problem((*path, "private"), "private must be true or false")
            return False
        if value and (action != "allow" or not names):
            has = "no names in `to`" if action == "allow" else f'action = "{action}"'
            source.problem((*path, "private"), "private = true lets an allow rule's names "
                           f"lead to internal addresses: this rule has {has}")
            return False
        return value

    def _destinations(
        self, source: _Source, path: tuple, raw: dict[str, Any]
    ) -> tuple[tuple[Network, ...], tuple[NamePattern, ...], bool]:
        """The networks, name patterns and whether "@resolvers" is among `to`'s entries."""
        entries = source.str_list(raw, path, "to")
        if entries is None:
            return (), (), False
        if not entries:
            source.problem((*path, "to"), "'to' is empty: leave it out to match any destination")
        networks: list[Network] = []
        names: list[NamePattern] = []
        resolvers = False
        where = (*path, "to")
        for entry in entries:
            if entry.startswith("@"):
                if entry == RESOLVERS:
                    resolvers = True
                else:
                    source.problem(where, f"unknown address set {entry!r}: the only one is "
                                   f"{RESOLVERS!r} (the host's DNS resolvers)", needle=entry)
                continue
            if is_pattern_text(entry):
                try:
                    names.append(parse_name_pattern(entry))
                except ValueError as exc:
                    source.problem(where, f"bad name pattern: {exc}", needle=entry)
                continue
            network = _network(source, where, entry)
            if network is not None:
                networks.append(network)
        return tuple(networks), tuple(names), resolvers

    def _sources(self, source: _Source, path: tuple, value: Any) -> tuple[Network, ...]:
        """match.source: the networks (CIDRs, addresses) a forwarded flow's original source
        must be inside; one string or a list of them."""
        where = (*path, "match", "source")
        entries = [value] if isinstance(value, str) else value
        if (not isinstance(entries, list) or not entries
                or not all(isinstance(e, str) and e for e in entries)):
            source.problem(where, 'match.source takes CIDRs and addresses: source = '
                           '["10.42.16.0/27", "2001:db8:42::/64", "10.42.17.5"]', needle="source")
            return ()
        found = [_network(source, where, entry) for entry in entries]
        return tuple(dict.fromkeys(n for n in found if n is not None))

    def _resolve(
        self, source: _Source, path: tuple, raw: dict[str, Any]
    ) -> tuple[NamePattern, ...]:
        """`resolve`: name patterns the client may resolve (or, in a deny rule, may not),
        without the rule matching any connection to them."""
        entries = source.str_list(raw, path, "resolve")
        if entries is None:
            return ()
        where = (*path, "resolve")
        if not entries:
            source.problem(where, "'resolve' is empty: leave it out")
        patterns: list[NamePattern] = []
        for entry in entries:
            if not is_pattern_text(entry) or entry.startswith("@"):
                source.problem(where, f"resolve takes name patterns, not {entry!r} (reverse "
                               "lookups follow the addresses the rules allow; or name them: "
                               "\"**.in-addr.arpa\")", needle=entry)
                continue
            try:
                patterns.append(parse_name_pattern(entry))
            except ValueError as exc:
                source.problem(where, f"bad name pattern: {exc}", needle=entry)
        return tuple(patterns)

    def _ports(
        self, source: _Source, path: tuple, raw: dict[str, Any]
    ) -> tuple[frozenset[int] | None, tuple[PortRange, ...]]:
        if "ports" not in raw:
            return None, ()
        value = raw["ports"]
        where = (*path, "ports")
        if not isinstance(value, list) or not value:
            source.problem(where, "ports must be a non-empty list, e.g. [443] or [\"8000-8099\"]")
            return None, ()
        singles: set[int] = set()
        ranges: list[PortRange] = []
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                if 1 <= item <= 65535:
                    singles.add(item)
                    continue
            elif isinstance(item, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", item.strip()):
                low, high = (int(p) for p in item.strip().split("-"))
                if 1 <= low <= high <= 65535:
                    ranges.append(PortRange(low, high))
                    continue
            source.problem(where, f"bad port {item!r}: ports are 1-65535, or \"LOW-HIGH\"",
                           needle=str(item))
        if not singles:
            return None, tuple(ranges)
        ports = frozenset(singles)
        return self.port_sets.setdefault(ports, ports), tuple(ranges)  # one per distinct set


class _Source:
    """One document's path and source map, and the helpers that report into `problems`."""

    def __init__(self, path: str, source_map: SourceMap, problems: list[Problem]) -> None:
        self.path = path
        self.map = source_map
        self.problems = problems

    def location(self, path: tuple) -> Location:
        return Location(self.path, self.map.line(path))

    def problem(self, path: tuple, message: str, needle: str | None = None) -> None:
        self.problems.append(Problem(Location(self.path, self.map.line(path, needle)), message))

    def array_of_tables(self, table: dict, key: str, path: tuple) -> list[dict[str, Any]]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            header = ".".join([*(p for p in path if isinstance(p, str)), key])
            self.problem((*path, key), f"{key!r} must be written as [[{header}]] tables")
            return []
        return value

    def optional_str(self, raw: dict, path: tuple, key: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem((*path, key), f"{key} must be a non-empty string")
            return None
        return value

    def required_str(self, raw: dict, path: tuple, key: str) -> str | None:
        if key not in raw:
            self.problem(path, f"missing required key {key!r}")
            return None
        return self.optional_str(raw, path, key)

    def str_list(
        self, raw: dict, path: tuple, key: str, required: bool = False
    ) -> list[str] | None:
        if key not in raw:
            if required:
                self.problem(path, f"missing required key {key!r}")
            return None
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem((*path, key), f"{key} must be a list of strings")
            return None
        return value

    def choice(
        self, raw: dict, path: tuple, key: str, allowed: tuple[str, ...], required: bool = False
    ) -> str | None:
        if key not in raw:
            if required:
                self.problem(path, f"missing required key {key!r} ({' | '.join(allowed)})")
            return None
        value = raw[key]
        if value not in allowed:
            self.problem((*path, key), f"{key} must be one of {' | '.join(allowed)}, "
                         f"not {value!r}")
            return None
        return allowed[allowed.index(value)]  # the constant: one string, not one per rule


def _network(source: _Source, where: tuple, entry: str) -> Network | None:
    """A CIDR or address of a policy, or None with the problem told (and the network
    probably meant, when host bits are set)."""
    try:
        return parse_network(entry.strip())
    except ValueError as exc:
        hint = ""
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(entry.strip(), strict=False)
            hint = f"; did you mean {fixed}?"
        source.problem(where, f"bad CIDR or address {entry!r}: {exc}{hint}", needle=entry)
        return None
