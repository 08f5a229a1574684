"""sock_diag over netlink without root: the request bytes, and any answer parsed or refused."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfguard.procs.sockdiag import (
    INET_DIAG_CGROUP_ID,
    INET_DIAG_NOCOOKIE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    REQ_LEN,
    SOCK_DIAG_BY_FAMILY,
    DiagSocket,
    SockDiagError,
    build_request,
    parse_diag_msg,
    parse_response,
    query_tuple,
)


def test_request_layout_v4_tcp() -> None:
    req = build_request("tcp", socket.AF_INET, "10.1.2.3", 40000, "93.184.216.34", 443, seq=7)
    assert len(req) == REQ_LEN == 72
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq, pid) == (72, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 7, 0)
    fam, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (fam, proto, ext, pad, states) == (socket.AF_INET, 6, 0, 0, 0xFFFFFFFF)
    sport, dport = struct.unpack_from("!HH", req, 24)
    assert (sport, dport) == (40000, 443)
    assert req[28:32] == bytes([10, 1, 2, 3]) and req[32:44] == b"\0" * 12
    assert req[44:48] == bytes([93, 184, 216, 34])
    ifidx, c0, c1 = struct.unpack_from("=III", req, 60)
    assert (ifidx, c0, c1) == (0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)


def test_request_v6_udp() -> None:
    req = build_request("udp", socket.AF_INET6, "2001:db8::1", 5353, "::1", 53)
    assert req[17] == socket.IPPROTO_UDP
    assert req[28:44] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert req[44:60] == socket.inet_pton(socket.AF_INET6, "::1")


def test_query_tuple_udp_is_reversed_tcp_is_not() -> None:
    assert query_tuple("tcp", "10.0.0.1", 1000, "10.0.0.2", 80) == (
        "10.0.0.1",
        1000,
        "10.0.0.2",
        80,
    )
    assert query_tuple("udp", "10.0.0.1", 1000, "10.0.0.2", 53) == (
        "10.0.0.2",
        53,
        "10.0.0.1",
        1000,
    )


def _rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _diag_answer(
    family: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    uid: int,
    inode: int,
    cgroup_id: int | None,
    seq: int = 1,
    extra_attrs: bytes = b"",
    cookie: int = 0x5678_0000_1234,
) -> bytes:
    body = struct.pack("=BBBB", family, 2, 0, 0)
    body += struct.pack(
        "!HH16s16s",
        sport,
        dport,
        socket.inet_pton(family, src).ljust(16, b"\0"),
        socket.inet_pton(family, dst).ljust(16, b"\0"),
    )
    body += struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    body += extra_attrs
    if cgroup_id is not None:
        body += _rta(INET_DIAG_CGROUP_ID, struct.pack("=Q", cgroup_id))
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 0, seq, 0) + body


def _nl_error(err: int, seq: int = 1) -> bytes:
    body = struct.pack("=i", err) + b"\0" * 16
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0, seq, 0) + body


def test_parse_answer_v4_with_cgroup_and_odd_attrs() -> None:
    # an attribute of 1 byte payload (padded) before the cgroup id must not shift parsing
    data = _diag_answer(
        socket.AF_INET,
        "10.1.2.3",
        40000,
        "1.1.1.1",
        443,
        uid=1000,
        inode=424242,
        cgroup_id=(1 << 40) + 5,
        extra_attrs=_rta(8, b"\x01"),
    )
    got = parse_response(data, seq=1)
    assert got == DiagSocket(
        family=socket.AF_INET,
        state=2,
        uid=1000,
        inode=424242,
        cgroup_id=(1 << 40) + 5,
        cookie=0x5678_0000_1234,
    )


def test_parse_answer_v6_without_cgroup() -> None:
    data = _diag_answer(
        socket.AF_INET6, "::ffff:127.0.0.1", 1, "::1", 2, uid=0, inode=9, cgroup_id=None
    )
    got = parse_response(data)
    assert got is not None
    assert got.family == socket.AF_INET6 and got.cgroup_id is None and got.inode == 9


def test_parse_answer_skips_other_sequence_numbers() -> None:
    stale = _diag_answer(
        socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=1, cgroup_id=1, seq=5
    )
    fresh = _diag_answer(
        socket.AF_INET, "3.3.3.3", 3, "4.4.4.4", 4, uid=2, inode=2, cgroup_id=1, seq=6
    )
    got = parse_response(stale + fresh, seq=6)
    assert got is not None and got.inode == 2
    assert parse_response(stale, seq=6) is None


@pytest.mark.parametrize("err", [-errno.ENOENT, -errno.ESRCH, 0])
def test_no_such_socket_is_none(err: int) -> None:
    assert parse_response(_nl_error(err)) is None


def test_done_is_none() -> None:
    assert parse_response(struct.pack("=IHHII", 20, NLMSG_DONE, 0, 1, 0) + b"\0" * 4) is None


def test_other_errors_raise() -> None:
    with pytest.raises(SockDiagError):
        parse_response(_nl_error(-errno.EPERM))


def test_truncated_messages_raise() -> None:
    data = _diag_answer(socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=1, cgroup_id=1)
    with pytest.raises(SockDiagError):
        parse_response(data[:40])
    with pytest.raises(SockDiagError):
        parse_diag_msg(data[16:60])


def test_truncated_attribute_is_dropped() -> None:
    cut = struct.pack("=HH", 12, INET_DIAG_CGROUP_ID) + b"\x01\x02"  # says 12, holds 6
    data = _diag_answer(socket.AF_INET, "1.1.1.1", 1, "2.2.2.2", 2, uid=1, inode=7,
                        cgroup_id=None, extra_attrs=_rta(5, b"\x07") + cut)
    got = parse_response(data)
    assert got is not None and got.inode == 7 and got.cgroup_id is None


_ADDRESSES = {socket.AF_INET: st.ip_addresses(v=4).map(str),
              socket.AF_INET6: st.ip_addresses(v=6).map(str)}


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([socket.AF_INET, socket.AF_INET6]).flatmap(lambda family: st.tuples(
    st.just(family), _ADDRESSES[family], st.integers(0, 65535), _ADDRESSES[family],
    st.integers(0, 65535), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.lists(st.tuples(st.integers(1, 20), st.binary(max_size=9)), max_size=3),
    st.integers(0, 2**64 - 1))))
def test_answers_parse_back_to_what_was_packed(case: tuple) -> None:
    family, src, sport, dst, dport, uid, inode, cgroup_id, others, cookie = case
    extra = b"".join(_rta(kind, payload) for kind, payload in others)
    data = _diag_answer(family, src, sport, dst, dport, uid=uid, inode=inode,
                        cgroup_id=cgroup_id, extra_attrs=extra, seq=9, cookie=cookie)
    got = parse_response(data, seq=9)
    assert got is not None
    assert got == DiagSocket(family, 2, uid, inode, cgroup_id, cookie)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 120), st.binary(max_size=8))
def test_any_netlink_bytes_give_an_answer_none_or_sockdiag_error(
        data: bytes, at: int, patch: bytes) -> None:
    """Arbitrary bytes, and a real answer with bytes overwritten anywhere."""
    answer = _diag_answer(socket.AF_INET, "10.0.0.1", 1, "10.0.0.2", 2, uid=1, inode=2,
                          cgroup_id=3)
    mutated = answer[:at] + patch + answer[at + len(patch):]
    for blob in (data, mutated):
        try:
            got = parse_response(blob, seq=1)
        except SockDiagError:
            continue
        assert got is None or isinstance(got, DiagSocket)
