"""Client matching: does a `[[client]]` match table hold for the process behind a flow?

A forwarded flow (engine.forward_from) comes with its ingress interface, which the
`interface` key matches, and, from a container, with its process. That process runs the
container's files: its `/usr/bin/apt` is whatever the image put there. So process keys
vouch for a container's flow (forwarded, or sent by a process in a container's cgroup on
the host's network) only in a table that also says where it comes from: its interface,
its container's name or image, or its cgroup (all set by this host, not the container);
a table of process keys alone speaks of this host's own programs.

`exe` holds only for a path that names the file the process runs (attribution checks it
by device and inode, see nfguard.procs.exepath): not for a program whose path was mounted
over in a namespace of its own, nor for one whose file was deleted or replaced since it
started (a package upgrade: it matches again once restarted). Keys about what a process
runs hold for none that attribution could not show made the flow (`unproven`: only found
holding its socket, which a child that inherited it across an exec also does)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Protocol

from nfguard.policy.model import IMAGE_ID_PREFIX, Client


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


class ContainerIdentity(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def image_id(self) -> str | None: ...


# Keys that say where a container's flow comes from (see the module's docstring).
ORIGIN_KEYS = frozenset({"interface", "container", "image", "cgroup"})
# Keys about what a process runs: none holds for an unproven sender.
PROGRAM_KEYS = frozenset({"exe", "parent_exe", "sha256", "cmdline"})


def match_key(process: Process) -> tuple:
    """Everything a match table can look at: processes equal here match the same clients."""
    return (process.exe, process.exe_deleted, process.exe_mismatch, process.unproven,
            process.parent_exe,
            process.cmdline, process.uid, process.user, process.gids, process.groups,
            process.unit, process.cgroup, process.sha256, process.interface,
            process.container)


def client_matches(client: Client, process: Process | None) -> bool:
    """All keys must hold; an empty match table matches every flow, even unattributed ones."""
    if not client.match:
        return True
    if process is None:
        return False
    if ((process.interface is not None or process.container is not None)
            and ORIGIN_KEYS.isdisjoint(key for key, _ in client.match)):
        return False
    return all(_holds(key, expected, process) for key, expected in client.match)


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
