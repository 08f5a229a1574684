"""Client matching: does a `[[client]]` match table hold for the process behind a flow?

A forwarded flow (engine.forward_from) comes with its ingress interface, which the
`interface` key matches, and, from a container, with its process. That process runs the
container's files: its `/usr/bin/apt` is whatever the image put there. So process keys
vouch for a container's flow (forwarded, or sent by a process in a container's cgroup on
the host's network) only in a table that also says where it comes from: its interface,
its container's name or image, or its cgroup (all set by this host, not the container);
a table of process keys alone speaks of this host's own programs.

`source` holds for a forwarded flow whose original source address (before any SNAT on
the way out) is inside one of its networks, and never for a flow of the host's own: an
address speaks of the sender's place on the network, as `interface` does. Clients with
`source` are found through an index by the sender's address (ClientIndex), so 10,000
client networks cost a lookup what 10 do.

`exe` holds only for a path that names the file the process runs (attribution checks it
by device and inode, see nfguard.procs.exepath): not for a program whose path was mounted
over in a namespace of its own, nor for one whose file was deleted or replaced since it
started (a package upgrade: it matches again once restarted). Keys about what a process
runs hold for none that attribution could not show made the flow (`unproven`: only found
holding its socket, which a child that inherited it across an exec also does)."""

from __future__ import annotations

import heapq
import socket
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Protocol

from nfguard.policy.model import IMAGE_ID_PREFIX, Client
from nfguard.policy.networks import Network, PrefixIndex


class Process(Protocol):
    """What attribution tells about the sender of a flow (see nfguard.procs); read-only,
    as the NamedTuple attribution builds."""

    @property
    def uid(self) -> int | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def exe(self) -> str | None: ...
    @property
    def exe_deleted(self) -> bool: ...
    @property
    def exe_mismatch(self) -> bool: ...
    @property
    def unproven(self) -> bool: ...
    @property
    def cmdline(self) -> tuple[str, ...]: ...
    @property
    def parent_exe(self) -> str | None: ...
    @property
    def cgroup(self) -> str | None: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def gids(self) -> tuple[int, ...]: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def interface(self) -> str | None: ...
    @property
    def container(self) -> ContainerIdentity | None: ...
    @property
    def source(self) -> str | None: ...  # a forwarded flow's original source address


class ContainerIdentity(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def image_id(self) -> str | None: ...


# Keys that say where a container's flow comes from (see the module's docstring).
ORIGIN_KEYS = frozenset({"interface", "container", "image", "cgroup", "source"})
# Keys about what a process runs: none holds for an unproven sender.
PROGRAM_KEYS = frozenset({"exe", "parent_exe", "sha256", "cmdline"})


def match_key(process: Process) -> tuple:
    """Everything a match table can look at: processes equal here match the same clients."""
    return (process.exe, process.exe_deleted, process.exe_mismatch, process.unproven,
            process.parent_exe,
            process.cmdline, process.uid, process.user, process.gids, process.groups,
            process.unit, process.cgroup, process.sha256, process.interface,
            process.container, process.source)


def client_matches(client: Client, process: Process | None,
                   source_checked: bool = False) -> bool:
    """All keys must hold; an empty match table matches every flow, even unattributed ones.
    `source_checked`: the sender's address is known to be inside the client's `source`
    (ClientIndex found it there), so its networks are not tried one by one."""
    if client.matches_everyone:
        return True
    if process is None:
        return False
    if client.sources and not (source_checked or _inside(client.sources, process.source)):
        return False
    if ((process.interface is not None or process.container is not None)
            and not client.sources
            and ORIGIN_KEYS.isdisjoint(key for key, _ in client.match)):
        return False
    return all(_holds(key, expected, process) for key, expected in client.match)


class ClientIndex:
    """The first client, in order, whose match table holds for a sender. Clients without
    `source` are tried in turn as before; of those with it, only the ones whose networks
    hold the sender's address, found in a prefix index (one probe per prefix length in
    use, however many networks): a gateway's 10,000 client networks cost what 10 do."""

    def __init__(self, clients: tuple[Client, ...]) -> None:
        self.clients = clients
        self._any_source = [p for p, client in enumerate(clients) if not client.sources]
        self._by_version = {4: PrefixIndex(32), 6: PrefixIndex(128)}
        for position, client in enumerate(clients):
            for network in client.sources:
                self._by_version[network.version].add(network.address, network.prefixlen,
                                                      position)
        for index in self._by_version.values():
            index.freeze()
        self._sourced = len(self._any_source) < len(clients)

    def first(self, process: Process | None) -> Client | None:
        clients = self.clients
        for position in self._candidates(process):
            client = clients[position]
            if client_matches(client, process, source_checked=True):
                return client
        return None

    def _candidates(self, process: Process | None) -> Iterable[int]:
        """Client positions in order: those without `source`, and those whose networks
        hold the sender's address (none for the host's own flows)."""
        source = None if process is None else process.source
        if source is None or not self._sourced:
            return self._any_source
        version, address = _address(source)
        found = sorted({p for positions in self._by_version[version].lookup(address)
                        for p in positions})
        return heapq.merge(self._any_source, found) if found else self._any_source


def _address(text: str) -> tuple[int, int]:
    """(version, integer) of an address as the wire parsers write it."""
    if ":" in text:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")


def _inside(networks: tuple[Network, ...], source: str | None) -> bool:
    if source is None:
        return False
    version, address = _address(source)
    return any(network.version == version
               and address >> (bits := (32 if version == 4 else 128) - network.prefixlen)
               == network.address >> bits for network in networks)


def _holds(key: str, expected: str, process: Process) -> bool:
    if process.unproven and key in PROGRAM_KEYS:
        return False
    if key == "exe":
        return not (process.exe_mismatch or process.exe_deleted) and _glob(process.exe,
                                                                            expected)
    if key == "parent_exe":
        return _glob(process.parent_exe, expected)
    if key == "cmdline":
        return bool(process.cmdline) and fnmatchcase(" ".join(process.cmdline), expected)
    if key == "user":
        if expected.isdigit():
            return process.uid == int(expected)
        return process.user == expected
    if key == "group":
        if expected.isdigit():
            return int(expected) in process.gids
        return expected in process.groups
    if key == "unit":
        return process.unit == expected
    if key == "cgroup":
        return in_cgroup(process.cgroup, expected)
    if key == "sha256":
        return process.sha256 == expected  # both lower-case hex
    if key == "interface":
        return _glob(process.interface, expected)
    if key == "container":
        container = process.container
        return container is not None and _glob(container.name, expected)
    if key == "image":
        container = process.container
        return container is not None and _glob(
            container.image_id if expected.startswith(IMAGE_ID_PREFIX) else container.image,
            expected)
    raise ValueError(f"unknown match key {key!r}")  # the loader admits only MATCH_KEYS


def in_cgroup(cgroup: str | None, path: str) -> bool:
    """Whether a cgroup is `path` or below it (the `cgroup` key)."""
    prefix = path.rstrip("/")
    return cgroup is not None and (cgroup == prefix or cgroup.startswith(prefix + "/"))


def _glob(value: str | None, pattern: str) -> bool:
    return value is not None and fnmatchcase(value, pattern)
