"""The queue adapter's pure parts: the packet messages it reads, and the verdict and flag
messages it writes, checked against the layout in linux/netfilter/nfnetlink_queue.h."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.queue import (
    PACKET_MESSAGE,
    QueuedPacket,
    QueueMessageError,
    accept_verdict,
    netlink_error,
    netlink_messages,
    queue_config,
    read_packet,
    verdict_header,
)


def walk(train: bytes) -> list[tuple[int, int, bytes]]:
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
    messages = walk(train)
    assert len(messages) == 2, "one message per verdict, end to end in the train"
    for (kind, flags, body), (packet_id, mark) in zip(
            messages, ((1, 0x10000000), (0xFFFFFFFE, 0xAFFFFFFF)), strict=True):
        assert kind == 0x0301
        assert flags & 1, "NLM_F_REQUEST"
        assert struct.unpack_from(">BBH", body) == (socket.AF_UNSPEC, 0, 513)
        assert attributes(body[4:]) == {2: struct.pack(">II", 1, packet_id),
                                        3: struct.pack(">I", mark)}


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def packet_message(*attrs: bytes, queue: int = 0) -> bytes:
    """An NFQNL_MSG_PACKET as nfqnl_build_packet_message lays it out."""
    body = struct.pack(">BBH", socket.AF_INET, 0, queue) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


IP_SYN = bytes.fromhex("4500003c00004000400600000a0000010a000002") + b"\x01" * 40


def kernel_packet(packet_id: int = 7, hook: int = 3, mark: int | None = 0x40000000,
                  uid: int | None = 1000, payload: bytes = IP_SYN) -> bytes:
    attrs = [attribute(1, struct.pack(">IHB", packet_id, 0x0800, hook)),
             attribute(6, struct.pack(">I", 2))]  # NFQA_IFINDEX_OUTDEV
    if mark is not None:
        attrs.append(attribute(3, struct.pack(">I", mark)))
    if uid is not None:
        attrs += [attribute(16, struct.pack(">I", uid)), attribute(17, struct.pack(">I", 100))]
    attrs.append(attribute(10, payload))
    return packet_message(*attrs)


def read_one(data: bytes) -> QueuedPacket:
    [(kind, start, end)] = netlink_messages(data)
    assert kind == PACKET_MESSAGE
    return read_packet(memoryview(data), start, end)


def test_packet_message_gives_id_hook_mark_payload_and_uid() -> None:
    assert read_one(kernel_packet()) == QueuedPacket(7, 3, 0x40000000, IP_SYN, 1000)


def test_absent_mark_is_zero_and_absent_uid_is_unknown() -> None:
    """The kernel leaves NFQA_MARK out for mark 0, and NFQA_UID for packets without a local
    socket (forwarded, or a socket without a file)."""
    got = read_one(kernel_packet(packet_id=0xFFFFFFFF, hook=1, mark=None, uid=None))
    assert got == QueuedPacket(0xFFFFFFFF, 1, 0, IP_SYN, None)


def test_payload_is_copied_out_of_the_receive_buffer() -> None:
    buffer = bytearray(kernel_packet())
    got = read_one(bytes(buffer))
    view = memoryview(buffer)
    [(_kind, start, end)] = netlink_messages(view)
    kept = read_packet(view, start, end)
    buffer[-len(IP_SYN):] = b"\0" * len(IP_SYN)  # the next read overwrites the buffer
    assert kept.payload == got.payload == IP_SYN


def test_a_forwarded_packet_gives_the_interface_it_came_in_on() -> None:
    """NFQA_IFINDEX_INDEV: present for forwarded (and received) packets, which have no
    local socket; the kernel lays it before the outgoing interface."""
    forwarded = packet_message(attribute(1, struct.pack(">IHB", 9, 0x0800, 2)),
                               attribute(5, struct.pack(">I", 31)),  # NFQA_IFINDEX_INDEV
                               attribute(6, struct.pack(">I", 2)),  # NFQA_IFINDEX_OUTDEV
                               attribute(3, struct.pack(">I", 0x40000000)),
                               attribute(10, IP_SYN))
    assert read_one(forwarded) == QueuedPacket(9, 2, 0x40000000, IP_SYN, None, 31)
    assert read_one(kernel_packet()).indev == 0, "sent by this host: no way in"


def test_several_messages_in_one_read_are_walked_in_order() -> None:
    data = kernel_packet(packet_id=1) + kernel_packet(packet_id=2, payload=IP_SYN[:21])
    found = [read_packet(data, start, end) for _kind, start, end in netlink_messages(data)]
    assert [(p.packet_id, len(p.payload)) for p in found] == [(1, 60), (2, 21)]


def test_message_without_packet_header_or_overrunning_is_an_error() -> None:
    with pytest.raises(QueueMessageError):
        read_one(packet_message(attribute(10, IP_SYN)))
    whole = kernel_packet()
    with pytest.raises(QueueMessageError):
        list(netlink_messages(whole[:-4]))  # says longer than the read
    overrun = bytearray(whole)
    overrun[20:22] = struct.pack("=H", 200)  # the packet header claims 200 bytes
    with pytest.raises(QueueMessageError):
        read_one(bytes(overrun))


def test_config_request_sets_copy_range_and_masked_flags_and_asks_for_an_ack() -> None:
    [(kind, flags, body)] = walk(queue_config(3, 65531, 0x8, 0x9))
    assert kind == 0x0302, "NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG"
    assert flags == 1 | 4, "NLM_F_REQUEST | NLM_F_ACK"
    assert struct.unpack_from(">BBH", body) == (socket.AF_UNSPEC, 0, 3)
    found = attributes(body[4:])
    # struct nfqnl_msg_config_params is packed: copy_range (be32), copy_mode (NFQNL_COPY_PACKET)
    assert found[2] == struct.pack(">IB", 65531, 2)
    assert found[4] == struct.pack(">I", 0x9) and found[5] == struct.pack(">I", 0x8)


@pytest.mark.parametrize(("code", "answering"), [(0, 0x0302), (errno.EPERM, 0x0302),
                                                 (errno.ENOENT, 0x0301)])
def test_netlink_error_reads_the_errno_and_the_request_it_answers(code: int,
                                                                  answering: int) -> None:
    """struct nlmsgerr: the error, then the header of the request it answers."""
    message = (struct.pack("=IHHIIi", 36, 2, 0, 0, 0, -code)
               + struct.pack("=IHHII", 40, answering, 5, 0, 0))
    [(kind, start, end)] = netlink_messages(message)
    assert kind == 2 and netlink_error(message, start, end) == (code, answering)
    with pytest.raises(QueueMessageError):
        netlink_error(message[:30], 0, 30)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 120), st.binary(max_size=8))
def test_any_bytes_read_or_raise_queue_message_error(data: bytes, at: int,
                                                     patch: bytes) -> None:
    """Arbitrary bytes, and a real message with bytes overwritten anywhere: the reader
    returns packets or raises QueueMessageError, nothing else."""
    real = bytearray(kernel_packet())
    real[at:at + len(patch)] = patch
    for candidate in (data, bytes(real)):
        try:
            for kind, start, end in netlink_messages(candidate):
                if kind == PACKET_MESSAGE:
                    got = read_packet(candidate, start, end)
                    assert 0 <= got.packet_id <= 0xFFFFFFFF
                    assert len(got.payload) <= end - start
                elif kind == 2:
                    netlink_error(candidate, start, end)
        except QueueMessageError:
            pass
