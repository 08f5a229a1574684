"""The daemon's configuration file (`/etc/nfguard/nfguard.toml`), validated."""

from __future__ import annotations

import grp
import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nfguard.policy import document
from nfguard.policy.internal import PRIVATE_SETTINGS, Private
from nfguard.policy.load import PolicyError, Problem, parse_toml
from nfguard.policy.model import Location
from nfguard.policy.resolve import QUERIES, Queries
from nfguard.policy.source import SourceMap

DEFAULT_PATH = "/etc/nfguard/nfguard.toml"
SYSTEM_RESOLVERS = "system"  # names.resolvers: the servers the host's resolv.conf names
DOCKER_ROOT = "/var/lib/docker"  # containers.docker_root: Docker's data-root
PODMAN_ROOT = "/var/lib/containers/storage"  # containers.podman_root: Podman's graphroot
CONTAINERD_STATE = "/run/containerd"  # containers.containerd_state: containerd's state
CRIO_RUNROOT = "/run/containers/storage"  # containers.crio_runroot: CRI-O's runroot
# The bridges of Docker (docker0, br-<network>), Podman, CNI, libvirt and LXC.
DEFAULT_FORWARD_FROM = ("docker0", "br-*", "podman*", "cni*", "virbr*", "lxcbr*")
# An interface name (at most 15 bytes) or a prefix of one followed by *.
_INTERFACE_PATTERN = re.compile(r"[A-Za-z0-9_.@+-]{1,15}|[A-Za-z0-9_.@+-]{1,14}\*")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    mode: str = "enforce"  # "enforce" | "audit"
    default: str = "deny"  # decision when no rule matches
    fail: str = "closed"  # "closed" | "open": new flows while no engine is attached
    queue: int = 0
    policy_dir: str = "/etc/nfguard/rules"
    filter_loopback: bool = False  # loopback traffic is not filtered unless asked
    workers: int = 1  # engine processes, one queue each (queue .. queue + workers - 1)
    queue_maxlen: int = 4096  # packets the kernel holds for the engine; more are dropped
    # New flows a second one user (forwarded: one source address) may hand the engine,
    # twice that in a burst; more are dropped before the queue. 0: no limit.
    new_flows_per_user: int = 2000
    # Interfaces (a trailing * matches any rest) whose forwarded flows are this host's
    # egress too: containers and VMs behind these bridges are judged like local processes.
    forward_from: tuple[str, ...] = DEFAULT_FORWARD_FROM


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: str = "/var/log/nfguard/audit.jsonl"  # "-" for stdout
    format: str = "json"  # "json" | "text"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9808"  # "" turns it off
    tls_cert: str = ""  # PEM certificate (chain): serve HTTPS; needs tls_key
    tls_key: str = ""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = "/run/nfguard/nfguard.sock"  # for `nfguard status` / `reload`; "" turns it off
    # A group whose members may ask for `nfguard exec` clients of their own processes (the
    # socket is then 0660 root:group; they get the exec requests only, stacked on the
    # host's policy: nfguard.exec.requests); "": root only (0600).
    group: str = ""


@dataclass(frozen=True, slots=True)
class NamesConfig:
    verify: bool = True  # anti-fronting: a presented name must resolve to the destination
    grace: float = 300.0  # seconds a DNS binding outlives its TTL
    min_ttl: float = 60.0  # shorter TTLs are raised to this
    max_entries: int = 100_000  # (address, name) pairs kept, least recently used dropped
    hello_timeout: float = 5.0  # seconds a pending flow may hold packets before "no name"
    # The DNS servers whose answers teach names: SYSTEM_RESOLVERS (the host's own, from
    # resolv.conf, followed as it changes), or addresses and networks; empty: every
    # server this host queried (then a process allowed to ask some other server can teach
    # the engine a false binding).
    resolvers: tuple[str, ...] | str = SYSTEM_RESOLVERS
    # Whether the names of the host's DNS queries are judged by the sender's policy
    # (Queries.POLICY) or every query passes (Queries.ANY); a client's `queries` overrides.
    queries: str = Queries.POLICY
    # Where a flow allowed only by a name may go (nfguard.policy.internal): Private.ALLOW,
    # anywhere but loopback, link-local and the metadata address; Private.DENY, nowhere
    # inside. A rule's `private = true`, or a CIDR rule naming the address, opts in.
    private: str = Private.ALLOW
    # Whether a SYN to where a name rule may allow passes as pending in the kernel, so the
    # flow crosses the queue once (nfguard.onetrip); off: every such SYN goes to the engine.
    one_trip: bool = True


@dataclass(frozen=True, slots=True)
class ContainersConfig:
    """Where the container runtimes keep their state (for containers' names and images):
    Docker's data-root, Podman's graphroot, containerd's state and CRI-O's runroot."""

    docker_root: str = DOCKER_ROOT
    podman_root: str = PODMAN_ROOT
    containerd_state: str = CONTAINERD_STATE
    crio_runroot: str = CRIO_RUNROOT


@dataclass(frozen=True, slots=True)
class Config:
    path: str = DEFAULT_PATH
    engine: EngineConfig = field(default_factory=EngineConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    names: NamesConfig = field(default_factory=NamesConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    containers: ContainersConfig = field(default_factory=ContainersConfig)


_SCHEMA: dict[str, dict[str, tuple[type[Any], tuple[Any, ...] | None]]] = {
    "engine": {
        "mode": (str, ("enforce", "audit")),
        "default": (str, ("allow", "deny")),
        "fail": (str, ("closed", "open")),
        "queue": (int, None),
        "policy_dir": (str, None),
        "filter_loopback": (bool, None),
        "workers": (int, None),
        "queue_maxlen": (int, None),
        "new_flows_per_user": (int, None),
        "forward_from": (list, None),
    },
    "audit": {"path": (str, None), "format": (str, ("json", "text"))},
    "metrics": {"listen": (str, None), "tls_cert": (str, None), "tls_key": (str, None)},
    "names": {
        "verify": (bool, None),
        "grace": (float, None),
        "min_ttl": (float, None),
        "max_entries": (int, None),
        "hello_timeout": (float, None),
        "resolvers": (object, None),  # checked by _resolvers
        "queries": (str, QUERIES),
        "private": (str, PRIVATE_SETTINGS),
        "one_trip": (bool, None),
    },
    "control": {"socket": (str, None), "group": (str, None)},
    "containers": {"docker_root": (str, None), "podman_root": (str, None),
                   "containerd_state": (str, None), "crio_runroot": (str, None)},
}
_SECTIONS = {"engine": EngineConfig, "audit": AuditConfig, "metrics": MetricsConfig,
             "names": NamesConfig, "control": ControlConfig, "containers": ContainersConfig}
# Lower bounds of numeric keys: (minimum, whether the minimum itself is allowed).
_MINIMUM = {
    ("engine", "workers"): (1, True),
    ("engine", "queue_maxlen"): (1, True),
    ("engine", "new_flows_per_user"): (0, True),
    ("names", "grace"): (0, True),
    ("names", "min_ttl"): (0, True),
    ("names", "max_entries"): (1, True),
    ("names", "hello_timeout"): (0, False),
}


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9808" / "[::1]:9808" -> (host, port); ValueError saying what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics.listen must be HOST:PORT (or \"\" for off), not {listen!r}")
    return host.strip("[]"), int(port)


def load_config(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate the config; a missing file is an error (say where it was looked for)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([Problem(Location(path, 0), f"cannot read config: {exc}")]) from exc
    return parse_config(text, path)


def parse_config(text: str, path: str) -> Config:
    document = parse_toml(text, path)
    source = SourceMap(text)
    problems: list[Problem] = []

    def problem(where: tuple, message: str) -> None:
        problems.append(Problem(Location(path, source.line(where)), message))

    sections: dict[str, Any] = {}
    for name, table in document.items():
        if name not in _SCHEMA or not isinstance(table, dict):
            problem((name,), f"unknown section {name!r} (allowed: {', '.join(_SCHEMA)})")
            continue
        values = {}
        for key, value in table.items():
            spec = _SCHEMA[name].get(key)
            if spec is None:
                problem((name, key), f"unknown key {key!r} in [{name}] "
                        f"(allowed: {', '.join(_SCHEMA[name])})")
                continue
            if key == "resolvers":
                try:
                    values[key] = _resolvers(value)
                except ValueError as exc:
                    problem((name, key), str(exc))
                continue
            kind, choices = spec
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # seconds may be written as integers
            minimum = _MINIMUM.get((name, key))
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                problem((name, key), f"{name}.{key} must be a "
                        f"{'number' if kind is float else kind.__name__}")
            elif minimum is not None and (value < minimum[0] or (
                    value == minimum[0] and not minimum[1])):
                problem((name, key), f"{name}.{key} must be "
                        f"{'>=' if minimum[1] else '>'} {minimum[0]}, not {value!r}")
            elif choices is not None and value not in choices:
                problem((name, key), f"{name}.{key} must be one of "
                        f"{' | '.join(map(str, choices))}, not {value!r}")
            elif key == "queue" and not 0 <= value <= 65535:
                problem((name, key), "engine.queue must be 0-65535")
            elif key == "workers" and value > 64:
                problem((name, key), f"engine.workers must be 1-64, not {value}")
            elif key == "listen" and value and not _valid_listen(value):
                problem((name, key), f"metrics.listen must be HOST:PORT (or \"\" for off), "
                        f"not {value!r}")
            elif name == "containers" and not value.startswith("/"):
                problem((name, key), f"{name}.{key} must be an absolute path, not {value!r}")
            elif key == "socket" and value and not value.startswith("/"):
                problem((name, key), f"control.socket must be an absolute path (or \"\" for "
                        f"off), not {value!r}")
            elif key == "group" and value and group_id(value) is None:
                problem((name, key), f"control.group: no group {value!r} on this host "
                        "(or \"\" for root only)")
            elif key == "forward_from" and (bad := [
                    v for v in value
                    if not isinstance(v, str) or not _INTERFACE_PATTERN.fullmatch(v)]):
                problem((name, key), f"engine.forward_from takes interface names, or a "
                        f"prefix and * (\"docker0\", \"br-*\"), not {', '.join(map(repr, bad))}")
            elif key == "forward_from":
                values[key] = tuple(dict.fromkeys(value))
            else:
                values[key] = value
        if name == "metrics" and bool(values.get("tls_cert")) != bool(values.get("tls_key")):
            given = "tls_cert" if values.get("tls_cert") else "tls_key"
            problem((name, given), "metrics.tls_cert and metrics.tls_key go together: "
                    "set both (HTTPS) or neither")
        sections[name] = _SECTIONS[name](**values)
    if problems:
        raise PolicyError(problems)
    config = Config(path=path, **sections)
    # Relative paths are relative to the config file, not to the cwd.
    base = Path(path).resolve().parent
    engine, metrics = config.engine, config.metrics
    return replace(
        config,
        engine=replace(engine, policy_dir=_beside(base, engine.policy_dir)),
        metrics=replace(metrics, tls_cert=_beside(base, metrics.tls_cert),
                        tls_key=_beside(base, metrics.tls_key)),
    )


def _resolvers(value: Any) -> tuple[str, ...] | str:
    """names.resolvers: "system", or a list of addresses and networks (canonical); a
    ValueError says what is wrong."""
    if value == SYSTEM_RESOLVERS:
        return SYSTEM_RESOLVERS
    if not isinstance(value, list):
        raise ValueError(f'names.resolvers must be "{SYSTEM_RESOLVERS}" or a list of '
                         f'addresses and networks, not {value!r}')
    networks, bad = [], []
    for entry in value:
        try:
            if not isinstance(entry, str):
                raise TypeError(entry)
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except (TypeError, ValueError):
            bad.append(entry)
    if bad:
        raise ValueError(f"names.resolvers takes addresses and networks (\"10.0.0.53\", "
                         f"\"127.0.0.0/8\"), not {', '.join(map(repr, bad))}")
    return tuple(networks)


def group_id(name: str) -> int | None:
    """The gid of a group given by name or in digits; None when the host has no such."""
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        return None


def _beside(base: Path, path: str) -> str:
    return path if not path or Path(path).is_absolute() else str(base / path)


def _valid_listen(listen: str) -> bool:
    try:
        parse_listen(listen)
    except ValueError:
        return False
    return True


def control_socket(path: str | Path = DEFAULT_PATH) -> str:
    """The daemon's control socket as the config at `path` sets it, read leniently:
    `nfguard reload` must reach the daemon even when the file it will re-read has errors."""
    try:
        return load_config(path).control.socket
    except PolicyError:
        pass
    try:
        control = document.loads(Path(path).read_text(encoding="utf-8")).get("control")
    except (OSError, UnicodeDecodeError, document.TOMLDecodeError):
        control = None
    value = control.get("socket") if isinstance(control, dict) else None
    return value if isinstance(value, str) else ControlConfig().socket
