"""Transient clients: one `nfguard exec` command's cgroup under a policy of its own, in
front of the running service's clients.

A transient client covers every process whose cgroup (the socket's, as attribution finds
it) is the command's cgroup or below it, so children, daemonised and `setsid` ones
included, and nothing outside it. It is judged by an engine of its own, compiled from the
policy text the request sent, with `engine.default = "deny"` and the mode the request asked
for, whatever the host's: the host's engine asks it first (Engine._judged). Nothing here
does I/O: the service's control handlers (nfguard.exec.requests) build and remove them,
and the registry lives as long as the service, across reloads of the host's policy.

Who asked decides how it composes with the host's policy:
- root (or the service's own user): the transient client *replaces* the host's decision
  for the command, as a client at the front of the list would;
- anyone else (the `[control] group`): it is *stacked*: the host's decision for the same
  process stands too, and whichever denies decides, so a transient client can only make
  things stricter, never let out what the host's policy denies.
Transient clients nest (an `exec` inside a command under `exec`): the deepest cgroup asks
first, and a stacked one defers to the ones around it as to the host.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from nfguard.engine import Engine
from nfguard.exec.policy import compose
from nfguard.exec.report import FlowRecord, from_event
from nfguard.policy.clients import Process, in_cgroup
from nfguard.policy.collector import collector_paused
from nfguard.policy.match import CompiledPolicySet
from nfguard.policy.model import ALLOW, DENY, Mode
from nfguard.policy.resolve import Queries

MAX_RECORDS = 4096  # distinct flows and queries one command's record keeps; more counted


class ExecMode(StrEnum):
    """How a command's flows are judged (the request's "mode")."""

    ENFORCE = "enforce"  # its policy decides, deny by default
    AUDIT = "audit"  # every flow passes; the record says what its policy would decide
    ALLOW_ALL = "allow_all"  # every flow passes and is recorded


EXEC_MODES = tuple(ExecMode)


class FlowLog:
    """What one command reached: flow records merged by flow, at most MAX_RECORDS."""

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self.limit = limit
        self._records: dict[tuple[Any, ...], FlowRecord] = {}
        self.allowed = 0  # flows and queries let through (verdict)
        self.denied = 0
        self.lost = 0  # events not kept: past the limit of distinct records

    def add(self, event: dict[str, Any]) -> None:
        record = from_event(event)
        if record is None:
            return
        if record.verdict == ALLOW:
            self.allowed += 1
        else:
            self.denied += 1
        seen = self._records.get(record.key)
        if seen is not None:
            self._records[record.key] = seen._replace(count=seen.count + 1)
        elif len(self._records) < self.limit:
            self._records[record.key] = record
        else:
            self.lost += 1

    def records(self) -> list[FlowRecord]:
        return list(self._records.values())


@dataclass(eq=False)
class Transient:
    """One command's client: its cgroup, its own engine, and what it reached."""

    id: str
    cgroup: str  # the cgroup v2 path, "/..." (relative to the v2 root)
    label: str  # what the requester calls it: argv0 and pid
    mode: ExecMode
    owner: int  # uid of the requester
    requester: int  # pid of the requester (its death: see nfguard.exec.requests)
    stacked: bool  # the host's decision stands too (a non-root requester)
    engine: Engine
    policy_name: str
    since: float = field(default_factory=time.time)
    flows: FlowLog = field(default_factory=FlowLog)
    populated: bool = False  # its cgroup has been seen with processes in it

    def covers(self, process: Process) -> bool:
        """Its cgroup or below, as a client's `cgroup` key; never a forwarded flow."""
        return process.interface is None and in_cgroup(process.cgroup, self.cgroup)

    def status(self) -> dict[str, Any]:
        """What `nfguard status` lists of it."""
        return {"id": self.id, "label": self.label, "cgroup": self.cgroup,
                "mode": str(self.mode), "owner": self.owner, "stacked": self.stacked,
                "policy": self.policy_name, "since": self.since,
                "allowed": self.flows.allowed, "denied": self.flows.denied}


def normalize_cgroup(path: str) -> str:
    """A cgroup v2 path as attribution writes them: "/a/b", no trailing or double slash.
    ValueError for "." or ".." parts, or the root itself (that would be every process)."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ValueError("the cgroup is the root of the hierarchy: every process")
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"the cgroup path {path!r} has '.' or '..' in it")
    return "/" + "/".join(parts)


def compile_transient(documents: Iterable[tuple[str, str]], allows: list[str],
                      mode: ExecMode, host: Engine) -> Engine:
    """The engine of a command's transient client; raises PolicyError (file:line).

    `documents`: (file name, TOML text) pairs in nfguard's policy format, and `allows`
    the `--allow` one-liners, made one policy set as the private engine makes it
    (nfguard.exec.policy.compose). Every client's flows run in the request's mode, deny
    by default, and its DNS queries are judged by its policy unless it says
    `queries = "any"` itself.
    """
    with collector_paused():
        policy_set = compose(list(documents), allows, allow_all=mode == ExecMode.ALLOW_ALL)
        run_as = Mode.AUDIT if mode == ExecMode.AUDIT else Mode.ENFORCE
        clients = tuple(replace(client, mode=run_as, queries=client.queries or Queries.POLICY)
                        for client in policy_set.clients)
        compiled = CompiledPolicySet(replace(policy_set, clients=clients))
    settings = replace(host.settings, mode=run_as, default=DENY)
    return Engine(settings, compiled, verify=host.verify, resolvers=host.resolvers)


class Transients:
    """The running service's transient clients, by id; kept across reloads."""

    def __init__(self) -> None:
        self._by_id: dict[str, Transient] = {}
        self._next = 1

    def new_id(self) -> str:
        ident = f"exec-{self._next}"
        self._next += 1
        return ident

    def add(self, transient: Transient) -> None:
        self._by_id[transient.id] = transient

    def remove(self, ident: str) -> Transient | None:
        return self._by_id.pop(ident, None)

    def get(self, ident: str) -> Transient | None:
        return self._by_id.get(ident)

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Transient]:
        return iter(list(self._by_id.values()))

    @property
    def matches_sha256(self) -> bool:
        """Whether a command's policy matches executables by hash (attribution reads it)."""
        return any(t.engine.policies.matches_sha256 for t in self._by_id.values())

    def covering(self, process: Process | None) -> tuple[Transient, ...]:
        """The transient clients whose cgroup holds the process, deepest cgroup first."""
        if not self._by_id or process is None or process.cgroup is None:
            return ()
        found = [t for t in self._by_id.values() if t.covers(process)]
        if not found:
            return ()
        if len(found) > 1:
            found.sort(key=lambda t: t.cgroup.count("/"), reverse=True)
        return tuple(found)

    def record(self, process: Process | None, event: dict[str, Any]) -> None:
        """An audit event of the process's: into the record of each command it is in."""
        for transient in self.covering(process):
            transient.flows.add(event)
