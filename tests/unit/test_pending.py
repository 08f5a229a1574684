"""Pending flows: a name read from the stream's first segment at once agrees with the
name read from the same bytes in pieces (reassembled by the readers)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nfguard import pending
from nfguard.pending import MAX_BANNER, Named, Outcome, PendingFlow, Step, Unreadable, Why
from nfguard.policy.match import Evidence
from nfguard.wire.ip import parse_packet
from tests.unit.wire.test_fuzz import (
    FUZZ,
    HTTP_SEED,
    TLS_SEED,
    WELL_FORMED_HEADS,
    mutated,
    pieces,
    split_points,
)

SEQ = 0xFFFFFF00  # the stream wraps past 2**32 on the way


def segment(seq: int, data: bytes, flags: int = 0x18) -> bytes:
    """An IPv4 TCP segment from a client (checksums left zero)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 1, 0x4000, 64, 6, 0,
                     bytes((10, 0, 0, 2)), bytes((192, 0, 2, 7)))
    return ip + struct.pack("!HHIIBBHHH", 40000, 443, seq & 0xFFFFFFFF, 1, 5 << 4, flags,
                            64240, 0, 0) + data


def read(chunks: list[bytes]) -> Outcome | Step:
    """What a flow that opened with a SYN at SEQ makes of `chunks`, sent in order."""
    syn = parse_packet(segment(SEQ, b"", flags=0x02))
    flow = PendingFlow("key", syn, ())
    step: Outcome | Step = Step.HELD
    offset = 1
    for n, chunk in enumerate(chunks):
        raw = segment(SEQ + offset, chunk)
        step = flow.segment(parse_packet(raw), raw, n, 0, 0.0)
        offset += len(chunk)
    return step


@pytest.mark.parametrize(("data", "outcome"), [
    (TLS_SEED, Named("fuzz.example.org", Evidence.SNI)),
    (HTTP_SEED, Named("a.example", Evidence.HOST)),
    (b"GET / HTTP/1.0\r\n\r\n", Unreadable(Why.NO_NAME)),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", Unreadable(Why.MALFORMED)),
])
def test_a_first_segment_holding_the_whole_hello_or_head_needs_no_reader(
        monkeypatch: pytest.MonkeyPatch, data: bytes, outcome: Outcome) -> None:
    def no_reader() -> None:
        raise AssertionError("a reader was made")

    monkeypatch.setattr(pending, "ClientHelloReader", no_reader)
    monkeypatch.setattr(pending, "RequestHeadReader", no_reader)
    assert read([data]) == outcome


def test_a_hello_or_head_in_pieces_is_read_by_a_reader() -> None:
    assert read([TLS_SEED[:7], TLS_SEED[7:]]) == Named("fuzz.example.org", Evidence.SNI)
    assert read([HTTP_SEED[:20], HTTP_SEED[20:]]) == Named("a.example", Evidence.HOST)
    assert read([HTTP_SEED[:20]]) is Step.HELD


# SSH identification lines around the RFC's 255 bytes, and what may follow them.
SSH_LINES = st.builds(lambda length, end, tail: b"SSH-2.0-" + b"x" * length + end + tail,
                      st.integers(0, 300), st.sampled_from([b"\r\n", b"\n", b""]),
                      st.binary(max_size=20))


@FUZZ
@given(st.one_of(st.sampled_from([TLS_SEED, HTTP_SEED]), mutated(TLS_SEED),
                 mutated(HTTP_SEED), WELL_FORMED_HEADS, SSH_LINES, st.binary(max_size=300)),
       st.data())
def test_the_first_segment_read_at_once_and_in_pieces_agree(data: bytes,
                                                           draw: st.DataObject) -> None:
    assume(data)  # a bare segment passes, read by nothing
    chunks = [chunk for chunk in pieces(data, draw.draw(split_points(data))) if chunk]
    assert read([data]) == read(chunks)


@pytest.mark.parametrize("length", [240, 245, 246, 300])
def test_an_ssh_line_is_told_alike_whole_and_cut_past_the_rfcs_255_bytes(length: int) -> None:
    line = b"SSH-2.0-" + b"x" * length + b"\r\n"
    whole = read([line + b"data"])
    assert whole == read([line[:MAX_BANNER + 1], line[MAX_BANNER + 1:] + b"data"])
    # Longer than RFC 4253 allows: not a banner, so a request that cannot be read.
    assert (whole == pending.OTHER_PROTOCOL) == (len(line) <= MAX_BANNER)
