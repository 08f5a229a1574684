"""Nothing silently turns nfguard off: watch nftables' change events and put nfguard's
ruleset back when another program removes or rewrites it.

Debian's nftables.service runs `flush ruleset` on start, reload and stop; iptables-restore,
firewalld and Docker rewrite tables too. The kernel announces every committed change on
netlink (NETLINK_NETFILTER, group NFNLGRP_NFTABLES, what `nft monitor` reads): one message
per table, chain, rule or set touched, then NFT_MSG_NEWGEN closing the batch with the
generation and the pid and name of the process that committed it.

`RulesetEvents` is the pure part: datagrams in, the batches that touched nfguard's ruleset
out. A message about any other table costs a header and one attribute (its table name) and
is dropped there. Batches committed by nfguard itself (its pid, or an iptables it ran) are
not changes. `RulesetGuard` is the thin I/O around it: the socket, and the restore.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Container, Iterable
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, Protocol

from nfguard.netlink import NLMSGHDR, Buffer, attributes
from nfguard.nft import TABLE
from nfguard.nft.ruleset import Ruleset
from nfguard.nft.xt import XT_CHAINS, XT_COMMENT, XT_TABLE

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFGENMSG = struct.Struct("!BBH")  # family, version, resource id
NFTA_NAME_OF_TABLE = 1  # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ... all 1
NFTA_CHAIN_NAME = 3
NFTA_RULE_CHAIN = 2
NFTA_GEN_ID, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 1, 2, 3
SO_RCVBUFFORCE = 33  # root may go past net.core.rmem_max
RECEIVE_BUFFER = 8 << 20  # a flush of a big ruleset (Docker's) is one burst of messages
MAX_SHOWN = 10  # changes kept for `status` and the log line


class Family(IntEnum):
    INET = 1
    IPV4 = 2
    IPV6 = 10


FAMILY_NAMES = {Family.INET: "inet", Family.IPV4: "ip", Family.IPV6: "ip6"}


class Action(StrEnum):
    ADDED = "added"
    DELETED = "deleted"


class Thing(StrEnum):
    TABLE = "table"
    CHAIN = "chain"
    RULE = "rule"
    XT_RULE = f"{XT_COMMENT} rule"  # one of the xt path's queue rules
    SET = "set"
    ELEMENT = "set element"
    OBJECT = "object"
    FLOWTABLE = "flowtable"


# nf_tables message types (include/uapi/linux/netfilter/nf_tables.h) that change a table,
# by what they touch; DESTROY* (26-32) are announced as DEL*.
_TOUCHES = {
    0: (Thing.TABLE, Action.ADDED), 2: (Thing.TABLE, Action.DELETED),
    3: (Thing.CHAIN, Action.ADDED), 5: (Thing.CHAIN, Action.DELETED),
    6: (Thing.RULE, Action.ADDED), 8: (Thing.RULE, Action.DELETED),
    9: (Thing.SET, Action.ADDED), 11: (Thing.SET, Action.DELETED),
    12: (Thing.ELEMENT, Action.ADDED), 14: (Thing.ELEMENT, Action.DELETED),
    18: (Thing.OBJECT, Action.ADDED), 20: (Thing.OBJECT, Action.DELETED),
    22: (Thing.FLOWTABLE, Action.ADDED), 24: (Thing.FLOWTABLE, Action.DELETED),
    26: (Thing.TABLE, Action.DELETED), 27: (Thing.CHAIN, Action.DELETED),
    28: (Thing.RULE, Action.DELETED), 29: (Thing.SET, Action.DELETED),
    30: (Thing.ELEMENT, Action.DELETED), 31: (Thing.OBJECT, Action.DELETED),
    32: (Thing.FLOWTABLE, Action.DELETED),
}
NFT_MSG_NEWGEN = 15
_XT_THINGS = (Thing.TABLE, Thing.CHAIN, Thing.RULE)


class Change(NamedTuple):
    """One thing another program did to nfguard's ruleset."""

    action: Action
    thing: Thing
    table: str  # "inet nfguard", "ip security"
    chain: str = ""

    def __str__(self) -> str:
        if self.thing is Thing.TABLE:
            return f"table {self.table} {self.action}"
        if self.thing is Thing.CHAIN:
            return f"chain {self.table} {self.chain} {self.action}"
        if self.chain:
            return f"{self.thing} in chain {self.table} {self.chain} {self.action}"
        return f"{self.thing} in table {self.table} {self.action}"


def summary(changes: Iterable[Change]) -> tuple[Change, ...]:
    """Each change once, without what a deleted table or chain took with it."""
    unique = tuple(dict.fromkeys(changes))
    tables = {c.table for c in unique if c.thing is Thing.TABLE and c.action is Action.DELETED}
    chains = {(c.table, c.chain) for c in unique
              if c.thing is Thing.CHAIN and c.action is Action.DELETED}
    return tuple(c for c in unique
                 if c.thing is Thing.TABLE
                 or (c.table not in tables
                     and (c.thing is Thing.CHAIN or (c.table, c.chain) not in chains)))


class Batch(NamedTuple):
    """One committed generation that touched nfguard's ruleset."""

    generation: int
    pid: int
    process: str
    changes: tuple[Change, ...]

    def by(self) -> str:
        return f"{self.process or '?'} (pid {self.pid})" if self.pid else self.process


# What the I/O side yields when the kernel dropped events (socket buffer full): what was
# changed is unknown, so the ruleset is checked as a whole.
EVENTS_LOST = Batch(0, 0, "events lost (socket buffer full)", ())


def _string(data: Buffer, start: int, end: int) -> str:
    return bytes(data[start:end]).split(b"\0", 1)[0].decode("utf-8", "replace")


def _find(data: Buffer, start: int, end: int, wanted: int) -> tuple[int, int] | None:
    for kind, value, value_end in attributes(data, start, end):
        if kind == wanted:
            return value, value_end
    return None


def _text(data: Buffer, start: int, end: int, wanted: int) -> str:
    found = _find(data, start, end, wanted)
    return _string(data, *found) if found is not None else "?"


class RulesetEvents:
    """Sans-IO: nftables change notifications in, batches that touched nfguard's ruleset
    out. `xt`: the queue step is iptables-nft rules in XT_TABLE (the xt path), which are
    watched too; the host's own rules there are not nfguard's business."""

    def __init__(self, xt: bool, own: Container[int]) -> None:
        self.xt = xt
        self.own = own  # pids whose batches are nfguard's own
        self._changes: list[Change] = []

    def feed(self, data: Buffer) -> list[Batch]:
        """Every message of one datagram; the foreign batches it closed."""
        done = []
        offset = 0
        while offset + NLMSGHDR.size + NFGENMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size or offset + length > len(data):
                break
            end = offset + length
            body = offset + NLMSGHDR.size
            offset = (end + 3) & ~3
            if kind >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            message = kind & 0xFF
            family = data[body]
            first = body + NFGENMSG.size  # the first attribute
            if message == NFT_MSG_NEWGEN:
                batch = self._close(data, first, end)
                if batch is not None:
                    done.append(batch)
            elif message in _TOUCHES:
                change = self._change(message, family, data, first, end)
                if change is not None:
                    self._changes.append(change)
        return done

    def _change(self, message: int, family: int, data: Buffer, start: int,
                end: int) -> Change | None:
        """What the message did to nfguard's ruleset; None when it is about another table.
        The table name comes first: nothing more is read for other tables."""
        found = _find(data, start, end, NFTA_NAME_OF_TABLE)
        if found is None:
            return None
        name = _string(data, *found)
        thing, action = _TOUCHES[message]
        if family == Family.INET and name == TABLE:
            table = f"inet {TABLE}"
        elif (self.xt and name == XT_TABLE and family in (Family.IPV4, Family.IPV6)
              and action is Action.DELETED and thing in _XT_THINGS):
            # The host's own rules and chains there are not nfguard's business.
            table = f"{FAMILY_NAMES[Family(family)]} {XT_TABLE}"
            if thing is Thing.RULE:
                if XT_COMMENT.encode() not in bytes(data[start:end]):
                    return None
                thing = Thing.XT_RULE
        else:
            return None
        if thing is Thing.CHAIN:
            chain = _text(data, start, end, NFTA_CHAIN_NAME)
            if table.endswith(XT_TABLE) and chain not in XT_CHAINS:
                return None
            return Change(action, thing, table, chain)
        if thing in (Thing.RULE, Thing.XT_RULE):
            return Change(action, thing, table, _text(data, start, end, NFTA_RULE_CHAIN))
        return Change(action, thing, table)

    def _close(self, data: Buffer, start: int, end: int) -> Batch | None:
        """NEWGEN ends a batch: the batch, unless it was nfguard's own or touched nothing."""
        changes, self._changes = self._changes, []
        generation = pid = 0
        process = ""
        for kind, value, value_end in attributes(data, start, end):
            if kind == NFTA_GEN_ID and value_end - value == 4:
                (generation,) = struct.unpack_from("!I", data, value)
            elif kind == NFTA_GEN_PROC_PID and value_end - value == 4:
                (pid,) = struct.unpack_from("!I", data, value)
            elif kind == NFTA_GEN_PROC_NAME:
                process = _string(data, value, value_end)
        if not changes or pid in self.own:
            return None
        return Batch(generation, pid, process, summary(changes))


def open_events() -> socket.socket:
    """A non-blocking socket that receives every nftables change in this network namespace
    (needs CAP_NET_ADMIN)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    return sock


class Installs(Protocol):
    """What the guard needs of nft.installer.Installer."""

    @property
    def pids(self) -> Container[int]: ...

    def install_table(self, ruleset: Ruleset) -> None: ...

    def install_xt(self, ruleset: Ruleset) -> None: ...


class RulesetGuard:
    """The main process's watch over its ruleset: reads the events socket from the daemon's
    loop and, when a foreign batch touched nfguard's ruleset, installs it again at once.
    The installer puts the whole ruleset back (atomically for the nft table) and keeps the
    pids of the programs it ran, so their batches are known as nfguard's own. The socket
    is open before the first install, so no change after it goes unseen."""

    def __init__(self, ruleset: Ruleset, installer: Installs, sock: socket.socket,
                 cut: Callable[[], int] | None = None) -> None:
        self.ruleset = ruleset
        self._installer = installer
        self._sock = sock  # open_events(), non-blocking
        self._cut = cut  # after a restore: cuts the flows made in the gap (nfguard.undecided)
        self.events = RulesetEvents(xt=bool(ruleset.xt_rules), own=installer.pids)
        self.restores = 0
        self.last: dict[str, Any] | None = None
        self._failed: list[Batch] = []  # a restore that failed, tried again by tend()

    def install(self) -> int:
        """The table first (from then on nothing new leaves undecided), then the flows made
        without it are cut, then the xt queue rules; how many flows were cut."""
        self._installer.install_table(self.ruleset)
        cut = 0
        if self._cut is not None:
            try:
                cut = self._cut()
            except OSError as exc:
                log.error("could not cut the flows made while the ruleset was gone: %s", exc)
        self._installer.install_xt(self.ruleset)
        return cut

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> None:
        """Everything the socket holds; one restore for all the foreign batches in it."""
        batches: list[Batch] = []
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                batches.append(EVENTS_LOST)
                continue
            batches += self.events.feed(data)
        if batches:
            self.restore(batches)

    def tend(self) -> None:
        """Try a failed restore again (the loop calls this once a second)."""
        if self._failed:
            self.restore(self._failed)

    def restore(self, batches: list[Batch]) -> None:
        started = time.monotonic()
        try:
            cut = self.install()
        except Exception as exc:
            self._failed = batches
            log.error("the ruleset was changed by %s and could not be restored: %s",
                      _who(batches), exc)
            return
        took = time.monotonic() - started
        self._failed = []
        self.restores += 1
        changes = list(dict.fromkeys(str(c) for batch in batches for c in batch.changes))
        changes += [batch.process for batch in batches if not batch.pid]
        self.last = {"at": time.time(), "missing": changes[:MAX_SHOWN], "by": _who(batches),
                     "took": took, "cut": cut}
        more = len(changes) - MAX_SHOWN
        log.warning("the ruleset was changed by %s (%s%s); nfguard's ruleset restored in "
                    "%.1f ms, %d flow(s) made meanwhile cut", _who(batches),
                    "; ".join(changes[:MAX_SHOWN]), f"; {more} more" if more > 0 else "",
                    took * 1e3, cut)

    def count(self) -> int:
        return self.restores

    def status(self) -> dict[str, Any]:
        last = self.last or {}
        return {"restores": self.restores, "last_at": last.get("at"),
                "last_missing": last.get("missing", []), "last_by": last.get("by"),
                "last_took": last.get("took"), "last_cut": last.get("cut", 0)}

    def close(self) -> None:
        self._sock.close()


def _who(batches: list[Batch]) -> str:
    return ", ".join(dict.fromkeys(batch.by() for batch in batches)) or "an unknown program"
