"""Which DNS servers' answers may teach the engine names ([names] resolvers).

An answer binds whatever addresses its server likes to whatever names, so only the servers
the host is set up to ask are believed; another server's answer is let through (the policy
allowed the query) but teaches nothing. A process the policy lets ask some server of its
own choosing could otherwise bind an allowed name to an address of its choosing and pass
the anti-fronting check with it.

"system", the default, is the host's own resolvers: the `nameserver` lines of
/etc/resolv.conf (none: the C library asks the local host), and, when they name
systemd-resolved's stub, the upstream servers resolved itself asks (programs resolving
through nss-resolve send no DNS packet the engine sees: resolved's own answers are what
teaches). The files are looked at on a timer (`tend`, from the daemon's loop, never on
the verdict path), so a DHCP lease or VPN that rewrites them is followed within a second.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable

from nfguard.config import SYSTEM_RESOLVERS
from nfguard.lru import Memo

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"  # written by systemd-resolved
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})
LIBC_DEFAULT = ("127.0.0.1", "::1")  # no nameserver line: the local host is asked
CHECK_INTERVAL = 1.0  # seconds between looks at the files
MAX_SERVERS = 1024  # server addresses whose standing is remembered

Stamp = tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None]


def parse_nameservers(text: str) -> tuple[str, ...]:
    """The addresses of a resolv.conf's `nameserver` lines, canonical, first seen first;
    a line whose address does not parse is skipped, as the C library skips it."""
    found: dict[str, None] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found[str(ipaddress.ip_address(fields[1].split("%", 1)[0]))] = None
            except ValueError:
                continue
    return tuple(found)


def system_servers(resolv_conf: str | None, resolved_upstreams: str | None) -> tuple[str, ...]:
    """The host's resolvers from the two files' texts (None: the file is missing)."""
    servers = parse_nameservers(resolv_conf or "") or LIBC_DEFAULT
    if RESOLVED_STUBS.intersection(servers):
        servers += parse_nameservers(resolved_upstreams or "")
    return tuple(dict.fromkeys(servers))


class TrustedServers:
    """The host's DNS resolvers as one [names] resolvers setting has them ("system", a
    tuple of networks, or () for every server): whose answers teach names, and which
    addresses a rule's "@resolvers" reaches."""

    def __init__(self, setting: tuple[str, ...] | str, resolv_conf: str = RESOLV_CONF,
                 resolved_upstreams: str = RESOLVED_UPSTREAMS,
                 interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.files = (resolv_conf, resolved_upstreams)
        self.interval = interval
        self.clock = clock
        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
        self.setting: tuple[str, ...] | str | None = None
        self.configure(setting)

    def configure(self, setting: tuple[str, ...] | str) -> None:
        """A reload's setting: another one starts afresh, the same one keeps what is known."""
        if setting == self.setting:
            return
        self.setting = setting
        self._checked_at: float | None = None
        self._stamp: Stamp | None = None
        if setting == SYSTEM_RESOLVERS:
            self.refresh()
        else:
            self._use(tuple(setting) or None)

    def tend(self) -> bool:
        """With "system": look at the files when the last look is `interval` old (a changed
        resolver is known within it); whether they had changed. The daemon's loop calls
        this, so no packet waits for a stat."""
        if self.setting != SYSTEM_RESOLVERS:
            return False
        now = self.clock()
        if self._checked_at is not None and 0 <= now - self._checked_at < self.interval:
            return False
        self._checked_at = now
        return self.refresh()

    def serves(self, ip: str) -> bool:
        """Whether `ip` is one of the resolvers, as the last look at the files had them."""
        networks = self.networks
        if networks is None:
            return True
        known = self._known.get(ip)
        if known is None:
            address = ipaddress.ip_address(ip)
            known = self._known.put(ip, any(address in network for network in networks))
        return known

    def trusts(self, ip: str) -> bool:
        """Whether answers from `ip` may teach names; each other server is logged once."""
        if self.serves(ip):
            return True
        if ip not in self._warned:
            self._warned.put(ip, True)
            log.warning("DNS answers from %s teach no names: it is not among the "
                        "resolvers (%s)", ip, self.describe())
        return False

    def refresh(self) -> bool:
        """With "system": read the files again if they changed; whether they had."""
        stamp = (_stamp(self.files[0]), _stamp(self.files[1]))
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        servers = system_servers(*(_read(path) for path in self.files))
        self._use(servers)
        log.info("the host's DNS resolvers: %s", self.describe())
        return True

    def describe(self) -> str:
        if self.networks is None:
            return "every server"
        shown = ", ".join(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                          for n in self.networks)
        return f"{shown} ({self.files[0]})" if self.setting == SYSTEM_RESOLVERS else shown

    def _use(self, servers: tuple[str, ...] | None) -> None:
        self.networks = (None if servers is None else
                         tuple(ipaddress.ip_network(s, strict=False) for s in servers))
        self._known: Memo[str, bool] = Memo(MAX_SERVERS)
        self._warned: Memo[str, bool] = Memo(MAX_SERVERS)


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """What changes when a file is rewritten in place or replaced (None: missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(64 * 1024)
    except OSError:
        return None
