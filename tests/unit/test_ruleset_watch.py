"""The ruleset watch: nftables change notifications recorded from a real kernel
(record_nft_events.py) in, the batches that touched nfguard's ruleset out; and the guard
that restores it."""

from __future__ import annotations

import base64
import errno
import gzip
import json
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfguard.config import EngineConfig
from nfguard.nft import NATIVE, XT
from nfguard.nft.installer import NftError
from nfguard.nft.ruleset import Ruleset, render
from nfguard.ruleset_watch import (
    Action,
    Batch,
    Change,
    RulesetEvents,
    RulesetGuard,
    Thing,
    summary,
)

RECORDED = json.loads(gzip.decompress(
    (Path(__file__).with_name("nft_events.json.gz")).read_bytes()))
NFGUARD = "inet nfguard"


def datagrams(step: str) -> list[bytes]:
    return [base64.b64decode(text) for text in RECORDED[step]]


def batches(step: str, xt: bool = True, own: frozenset[int] = frozenset()) -> list[Batch]:
    events = RulesetEvents(xt=xt, own=own)
    return [batch for data in datagrams(step) for batch in events.feed(data)]


def said(found: list[Batch]) -> list[list[str]]:
    return [[str(change) for change in batch.changes] for batch in found]


def test_a_flushed_ruleset_is_nfguards_table_and_its_xt_tables() -> None:
    found = batches("flush_ruleset")
    assert said(found) == [["table inet nfguard deleted", "table ip security deleted",
                            "table ip6 security deleted"]]
    assert found[0].process == "nft" and found[0].pid > 0 and found[0].generation > 0
    assert found[0].by() == f"nft (pid {found[0].pid})"


def test_nftables_service_file_and_delete_table() -> None:
    assert said(batches("nftables_service")) == [[
        "table ip security deleted", "table ip6 security deleted", "table inet nfguard deleted"]]
    assert said(batches("delete_table")) == [["table inet nfguard deleted"]]


def test_iptables_restore_of_the_security_table_takes_the_queue_rules() -> None:
    found = batches("iptables_restore_security")
    assert said(found) == [["table ip security deleted"], ["table ip6 security deleted"]]
    assert [b.process for b in found] == ["iptables-restor", "ip6tables-resto"]  # comm: 15


def test_changes_inside_the_table_are_changes_too() -> None:
    assert said(batches("insert_into_nfguard")) == [["rule in chain inet nfguard egress added"]]
    assert said(batches("delete_rule_of_nfguard")) == [["rule in chain inet nfguard cut deleted"]]


@pytest.mark.parametrize("step", ["other_table", "user_security_rule",
                                  "iptables_restore_filter"])
def test_other_tables_and_the_hosts_own_xt_rules_are_not_nfguards(step: str) -> None:
    assert batches(step) == []


def test_the_native_path_does_not_watch_iptables() -> None:
    assert said(batches("flush_ruleset", xt=False)) == [["table inet nfguard deleted"]]
    assert batches("iptables_restore_security", xt=False) == []


def test_nfguards_own_install_is_not_a_change() -> None:
    """Its own commits are told by pid: the engine's (libnftables in process) and those of
    the iptables it ran; a batch of another pid is foreign, also in between."""
    for step in ("install", "reinstall_after_delete", "reinstall_over_itself",
                 "reinstall_after_restore"):
        found = batches(step)  # every batch: none is its own yet
        own = frozenset(batch.pid for batch in found)
        assert found and batches(step, own=own) == [], step
    engine = next(b.pid for b in batches("reinstall_over_itself") if b.process == "python")
    iptables = batches("reinstall_over_itself", own=frozenset({engine}))
    assert iptables and all(b.process.endswith("tables-nft") for b in iptables)
    assert said(iptables)[0] == ["nfguard queue rule in chain ip security INPUT deleted"]


def test_messages_split_anywhere_between_datagrams_lose_nothing_wrongly() -> None:
    """The kernel sends whole messages per datagram; one cut short is skipped, never
    misread, and the batch still closes."""
    events = RulesetEvents(xt=True, own=frozenset())
    data = datagrams("delete_table")
    cut = [d[: len(d) // 2] for d in data[:-1]] + data[-1:]
    assert all(isinstance(b, Batch) for d in cut for b in events.feed(d))


@given(st.binary(max_size=512))
def test_garbage_never_raises(data: bytes) -> None:
    RulesetEvents(xt=True, own=frozenset()).feed(data)


@given(st.integers(min_value=0, max_value=(1 << 16) - 1), st.binary(max_size=64))
def test_nftables_messages_with_odd_attributes_never_raise(kind: int, body: bytes) -> None:
    message = struct.pack("=IHHII", 16 + 4 + len(body), 10 << 8 | (kind & 0xFF), 0, 0, 0)
    RulesetEvents(xt=True, own=frozenset()).feed(message + bytes([2, 0, 0, 0]) + body)


def test_summary_keeps_each_change_once_without_what_a_deletion_took_along() -> None:
    rule = Change(Action.DELETED, Thing.RULE, NFGUARD, "egress")
    chain = Change(Action.DELETED, Thing.CHAIN, NFGUARD, "egress")
    other = Change(Action.ADDED, Thing.RULE, NFGUARD, "output")
    assert summary([rule, rule, other]) == (rule, other)
    assert summary([rule, chain, other]) == (chain, other)
    table = Change(Action.DELETED, Thing.TABLE, NFGUARD)
    assert summary([rule, chain, other, table]) == (table,)
    assert str(Change(Action.DELETED, Thing.SET, NFGUARD)) == "set in table inet nfguard deleted"


# -- the guard -----------------------------------------------------------------------------


class FakeInstaller:
    def __init__(self, fail: int = 0) -> None:
        self.pids: set[int] = set()
        self.installed: list[Ruleset] = []
        self.fail = fail

    def install_table(self, ruleset: Ruleset) -> None:
        if self.fail:
            self.fail -= 1
            raise NftError("busy")
        self.installed.append(ruleset)

    def install_xt(self, ruleset: Ruleset) -> None:
        assert self.installed[-1] is ruleset, "the table first"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(what the guard reads, what the test writes): datagrams, as netlink delivers them."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_guard_restores_once_per_read_and_says_what_and_who(
        pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = pair
    ruleset = render(EngineConfig(), XT)
    installer = FakeInstaller()
    guard = RulesetGuard(ruleset, installer, ours)
    assert guard.events.xt
    assert guard.status() == {"restores": 0, "last_at": None, "last_missing": [],
                              "last_by": None, "last_took": None, "last_cut": 0}
    for data in datagrams("other_table"):
        theirs.send(data)
    guard.read()
    assert installer.installed == [] and guard.count() == 0
    for step in ("flush_ruleset", "insert_into_nfguard"):
        for data in datagrams(step):
            theirs.send(data)
    with caplog.at_level(logging.WARNING):
        guard.read()
    assert installer.installed == [ruleset], "one restore for everything read at once"
    status = guard.status()
    assert status["restores"] == guard.count() == 1
    assert status["last_missing"] == ["table inet nfguard deleted", "table ip security deleted",
                                      "table ip6 security deleted",
                                      "rule in chain inet nfguard egress added"]
    assert status["last_by"].startswith("nft (pid ")
    assert 0 <= status["last_took"] < 1
    assert "the ruleset was changed by nft (pid" in caplog.text
    assert "nfguard's ruleset restored in" in caplog.text


def test_native_guard_and_a_failed_restore_is_tried_again(
        pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = pair
    installer = FakeInstaller(fail=1)
    guard = RulesetGuard(render(EngineConfig(), NATIVE), installer, ours)
    assert not guard.events.xt
    for data in datagrams("delete_table"):
        theirs.send(data)
    with caplog.at_level(logging.ERROR):
        guard.read()
    assert guard.count() == 0 and "could not be restored: busy" in caplog.text
    guard.tend()
    assert guard.count() == 1 and len(installer.installed) == 1
    guard.tend()
    assert guard.count() == 1, "nothing left to retry"
    assert guard.status()["last_missing"] == ["table inet nfguard deleted"]


def test_flows_made_in_the_gap_are_cut_once_the_table_is_back(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    installer = FakeInstaller()
    cuts: list[int] = []

    def cut() -> int:
        assert installer.installed, "after the table, before the xt rules"
        cuts.append(len(installer.installed))
        return 2

    guard = RulesetGuard(render(EngineConfig(), XT), installer, ours, cut)
    for data in datagrams("flush_ruleset"):
        theirs.send(data)
    guard.read()
    assert cuts == [1] and guard.status()["last_cut"] == 2


class Overflowing:
    """A socket whose buffer overflowed once: the kernel dropped events."""

    def __init__(self) -> None:
        self.calls = 0

    def recv(self, _size: int) -> bytes:
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        raise BlockingIOError


def test_lost_events_mean_a_restore() -> None:
    """What was changed is unknown: the ruleset is put back whole, to be sure."""
    installer = FakeInstaller()
    guard = RulesetGuard(render(EngineConfig(), NATIVE), installer,
                         Overflowing())  # type: ignore[arg-type]
    guard.read()
    assert guard.count() == 1 and len(installer.installed) == 1
    assert guard.status()["last_by"] == "events lost (socket buffer full)"
