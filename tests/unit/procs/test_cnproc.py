"""Process events (cn_proc): the subscription and the events as bytes."""

from __future__ import annotations

import struct

from nfguard.procs.cnproc import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    ProcEvent,
    build_subscribe,
    parse_events,
)
from nfguard.procs.sockdiag import NLMSG_DONE


def _cn_datagram(what: int, *ints: int, idx: int = 1, val: int = 1) -> bytes:
    """One cn_proc netlink datagram as the kernel sends it."""
    ev = struct.pack("=IIQ", what, 0, 123456789) + struct.pack(f"={len(ints)}i", *ints)
    cn = struct.pack("=IIIIHH", idx, val, 0, 0, len(ev), 0) + ev
    return struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def test_cnproc_subscribe_layout() -> None:
    msg = build_subscribe(4321)
    assert len(msg) == 16 + 20 + 4
    assert struct.unpack_from("=IHHII", msg) == (40, NLMSG_DONE, 0, 0, 4321)
    assert struct.unpack_from("=IIIIHH", msg, 16) == (CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0)
    assert struct.unpack_from("=I", msg, 36) == (1,)  # PROC_CN_MCAST_LISTEN
    assert struct.unpack_from("=I", build_subscribe(1, listen=False), 36) == (2,)


def test_cnproc_parse_events() -> None:
    data = (
        _cn_datagram(PROC_EVENT_FORK, 10, 10, 11, 11)  # process 10 forks process 11
        + _cn_datagram(PROC_EVENT_FORK, 10, 10, 12, 10)  # a thread of 10: not a process
        + _cn_datagram(PROC_EVENT_EXEC, 11, 11)
        + _cn_datagram(PROC_EVENT_EXIT, 13, 10, 0, 17, 1, 1)  # a thread exits
        + _cn_datagram(PROC_EVENT_EXIT, 11, 11, 0, 17, 10, 10)
        + _cn_datagram(0x200, 11, 11)  # comm change: not wanted
        + _cn_datagram(PROC_EVENT_EXEC, 20, 20, idx=2)  # another connector
        + _cn_datagram(PROC_EVENT_FORK, 1, 1)  # short fork body
    )
    assert parse_events(data) == [
        ProcEvent("fork", 11, 10, 123456789),
        ProcEvent("exec", 11, None, 123456789),
        ProcEvent("exit", 11, None, 123456789),
    ]
    assert parse_events(data[:-3]) == parse_events(data)  # a cut last message is dropped
    assert parse_events(b"") == [] and parse_events(b"\xff" * 10) == []
    assert parse_events(struct.pack("=IHHII", 4, 3, 0, 0, 0)) == []  # bad length
