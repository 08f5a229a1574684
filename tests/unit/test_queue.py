"""The queue adapter's pure parts: the verdict messages it writes itself, and the batch
view of the queue socket."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from nfguard.queue import _Batch, accept_verdict, verdict_header


def netlink_messages(train: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, body) of each netlink message in a train, as the kernel walks it."""
    found = []
    while train:
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", train)
        assert 16 <= length <= len(train), "a message overruns the train"
        found.append((kind, flags, train[16:length]))
        train = train[(length + 3) & ~3:]
    return found


def attributes(data: bytes) -> dict[int, bytes]:
    found = {}
    while data:
        length, kind = struct.unpack_from("=HH", data)
        assert 4 <= length <= len(data), "an attribute overruns the message"
        found[kind] = data[4:length]
        data = data[(length + 3) & ~3:]
    return found


def test_verdicts_read_as_nfnetlink_queue_verdict_messages() -> None:
    """Layout from linux/netfilter/nfnetlink_queue.h: type NFNL_SUBSYS_QUEUE (3) << 8 |
    NFQNL_MSG_VERDICT (1), an nfgenmsg with the queue number in network order, then
    NFQA_VERDICT_HDR (2: NF_ACCEPT, packet id) and NFQA_MARK (3), both big-endian."""
    header = verdict_header(513)
    train = b"".join(accept_verdict(header, packet_id, mark) for packet_id, mark in
                     ((1, 0x10000000), (0xFFFFFFFE, 0x8FFFFFFF | 0x20000000)))
    messages = netlink_messages(train)
    assert len(messages) == 2, "one message per verdict, end to end in the train"
    for (kind, flags, body), (packet_id, mark) in zip(
            messages, ((1, 0x10000000), (0xFFFFFFFE, 0xAFFFFFFF)), strict=True):
        assert kind == 0x0301
        assert flags & 1, "NLM_F_REQUEST"
        assert struct.unpack_from(">BBH", body) == (socket.AF_UNSPEC, 0, 513)
        assert attributes(body[4:]) == {2: struct.pack(">II", 1, packet_id),
                                        3: struct.pack(">I", mark)}


def test_batch_view_stops_after_its_reads() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        for i in range(5):
            a.send(b"packet %d" % i)
        batch = _Batch(b)
        batch.left = 3
        assert [batch.recv(64) for _ in range(3)] == [b"packet 0", b"packet 1", b"packet 2"]
        with pytest.raises(BlockingIOError) as info:
            batch.recv(64)
        assert info.value.args[0] == errno.EAGAIN, "what run_socket() takes as 'no more'"
        batch.left = 10
        assert [batch.recv(64) for _ in range(2)] == [b"packet 3", b"packet 4"]
        with pytest.raises(BlockingIOError):
            batch.recv(64)  # the socket itself is empty
