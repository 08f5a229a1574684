"""Workers share DNS bindings through pipes (no root): the codec, and two pipelines
where one learns an answer and the other decides a flow by that name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.dns import DNSRR

from nfguard import marks
from nfguard.names.peers import PIPE_BUF, Peers, decode, encode
from tests.unit.names.test_learner import GH, Harness, dns_answer


def test_codec_round_trip_keeps_an_address_with_its_names() -> None:
    bindings = [("140.82.112.3", "github.com", 60), ("140.82.112.3", "gh.example", 30),
                ("2001:db8::1", "v6.example", 5)]
    lines = encode(1.5, bindings)
    assert len(lines) == 2 and all(line.endswith(b"\n") for line in lines)
    decoded = [decode(line) for line in lines]
    assert decoded == [(1.5, bindings[:2]), (1.5, bindings[2:])]


def test_an_address_with_many_names_is_split_below_pipe_buf() -> None:
    bindings = [("192.0.2.1", f"{'n' * 60}{i}.example", 300) for i in range(200)]
    lines = encode(2.0, bindings)
    assert len(lines) > 1 and all(len(line) <= PIPE_BUF for line in lines)
    assert [b for line in lines for b in decode(line)[1]] == bindings


@given(st.binary(max_size=300))
def test_decode_gives_bindings_or_value_error(data: bytes) -> None:
    try:
        learnt_at, bindings = decode(data)
    except ValueError:
        return
    assert isinstance(learnt_at, float)
    assert all(isinstance(ip, str) and isinstance(name, str) and isinstance(ttl, int)
               for ip, name, ttl in bindings)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[Harness, Harness]]:
    """Two pipelines, each publishing to the other's inbox."""
    (read_a, write_a), (read_b, write_b) = Peers.pipes(2)
    try:
        a, b = Harness(tmp_path / "a"), Harness(tmp_path / "b")
        a.pipeline.peers = Peers(read_a, [write_b])
        b.pipeline.peers = Peers(read_b, [write_a])
        yield a, b
    finally:
        for fd in (read_a, write_a, read_b, write_b):
            os.close(fd)


def test_a_flow_on_one_worker_sees_what_another_worker_learnt(
        two_workers: tuple[Harness, Harness]) -> None:
    a, b = two_workers
    assert b.pipeline.names.names_for(GH, b.now) == set()
    # worker a gets the answer; it is published before the answer is accepted
    answer = dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=GH))
    assert a.answer(answer) == marks.with_verdict(marks.QUEUED, marks.ALLOW)
    assert b.pipeline.receive_peers() == 1
    assert b.pipeline.names.names_for(GH, b.now) == {"github.com"}
    assert b.pipeline.receive_peers() == 0  # nothing twice
    assert a.pipeline.receive_peers() == 0  # no echo to the sender
    assert a.pipeline.peers.sent == 1 and a.pipeline.peers.dropped == 0


def test_a_full_inbox_drops_and_counts_never_blocks() -> None:
    (read, write), = Peers.pipes(1)
    try:
        sender = Peers(os.open(os.devnull, os.O_RDONLY), [write])
        big = [(f"10.{i // 256 % 256}.{i % 256}.1", "x" * 200 + ".example", 60)
               for i in range(20000)]
        sender.publish(1.0, big)
        assert sender.dropped > 0 and sender.sent > 0
        receiver = Peers(read, [])
        got = receiver.receive()
        assert len(got) == sender.sent  # whole lines only
    finally:
        os.close(read)
        os.close(write)


def test_bindings_are_counted_once_across_workers(two_workers: tuple[Harness, Harness]) -> None:
    a, b = two_workers
    a.answer(dns_answer(DNSRR(rrname="github.com", type="A", ttl=300, rdata=GH)))
    b.pipeline.receive_peers()
    assert (a.stats.dns_bindings, b.stats.dns_bindings) == (1, 0)
    assert (a.stats.dns_answers, b.stats.dns_answers) == (1, 0)
