"""`nfguard names`: the cache's pairs with the answer that taught each, from real answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP

from nfguard import marks
from nfguard.control import Reply
from nfguard.metrics.counts import Stats
from nfguard.names.cache import NameCache
from nfguard.names.learner import MAX_ORIGINS, Learner
from nfguard.names.listing import listing, names_handler, normalise, render
from nfguard.names.resolvers import TrustedServers

RESOLVER, CLIENT = "198.18.0.1", "198.18.0.2"
NOW = 1_700_000_000.0


def make_learner() -> tuple[Learner, list[float]]:
    clock = [NOW]
    return Learner(NameCache(), TrustedServers(()), Stats(), lambda: clock[0]), clock


def answer(*records: DNSRR, qname: str, tcp: bool = False) -> bytes:
    message = DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname), an=list(records))
    if tcp:
        raw = bytes(message)
        return bytes(IP(src=RESOLVER, dst=CLIENT) / TCP(sport=53, dport=40000, flags="PA",
                                                         seq=1) / (len(raw).to_bytes(2, "big")
                                                                   + raw))
    return bytes(IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=5353) / message)


def test_a_pair_says_which_answer_taught_it() -> None:
    learner, clock = make_learner()
    learner.answer(answer(DNSRR(rrname="www.example.test", type="CNAME",
                                rdata="edge.cdn.test", ttl=300),
                          DNSRR(rrname="edge.cdn.test", type="A", rdata="192.0.2.7", ttl=60),
                          qname="www.example.test"), marks.QUEUED)
    clock[0] += 30
    found = listing(learner, "192.0.2.7", clock[0])
    assert found["total"] == 2 and found["query"] == "192.0.2.7"
    edge, www = found["pairs"]  # by name
    assert (edge["name"], www["name"]) == ("edge.cdn.test", "www.example.test")
    assert edge["origin"] == {"resolver": RESOLVER, "client": f"{CLIENT}:5353",
                              "transport": "udp", "learnt_at": NOW,
                              "question": "www.example.test"}
    assert edge["ttl"] == 60 and edge["expires_at"] == NOW + 60 + 300  # TTL + grace
    assert www["chain"] == ["edge.cdn.test"] and edge["chain"] == ["www.example.test"]
    text = render(found)
    assert "192.0.2.7  edge.cdn.test  expires in 5m 30s (" in text
    assert (f"  learnt {text.split('learnt ')[1][:19]} from {RESOLVER} (udp) answering "
            f"{CLIENT}:5353, question www.example.test; TTL 60 s\n") in text
    assert "  same answer, same address: www.example.test\n" in text
    assert "(expiry: the answer's TTL, at least 60 s, plus 300 s of grace)" in text


def test_by_name_all_and_nothing() -> None:
    learner, _ = make_learner()
    for ip in ("192.0.2.1", "2001:db8::1"):
        kind = "AAAA" if ":" in ip else "A"
        learner.answer(answer(DNSRR(rrname="a.test", type=kind, rdata=ip, ttl=60),
                              qname="a.test"), marks.QUEUED)
    learner.answer(answer(DNSRR(rrname="b.test", type="A", rdata="192.0.2.2", ttl=60),
                          qname="b.test", tcp=True), marks.QUEUED)
    by_name = listing(learner, "A.Test.", NOW)
    assert [p["ip"] for p in by_name["pairs"]] == ["2001:db8::1", "192.0.2.1"]
    everything = listing(learner, "", NOW)
    assert [p["name"] for p in everything["pairs"]] == ["b.test", "a.test", "a.test"], \
        "most recent first"
    assert everything["pairs"][0]["origin"]["transport"] == "tcp"
    assert listing(learner, "[2001:0db8::1]", NOW)["total"] == 1
    assert listing(learner, "", NOW, limit=1)["total"] == 3
    assert "... 2 more pairs not shown" in render(listing(learner, "", NOW, limit=1))
    assert listing(learner, "a.test", NOW + 361)["pairs"] == [], "expired"
    assert render(listing(learner, "nope.test", NOW)).startswith(
        "no names for nope.test in the cache (3 pairs;")


def test_a_binding_from_another_worker_or_long_ago() -> None:
    learner, _ = make_learner()
    learner.learn(NOW, [("192.0.2.9", "peer.test", 120)])  # what a peer sent
    pair = listing(learner, "peer.test", NOW)["pairs"][0]
    assert pair["from_peer"] and pair["origin"] is None
    assert "learnt by another engine worker; TTL 120 s" in render(listing(learner, "peer.test",
                                                                          NOW))
    learner.origins.clear()  # as if MAX_ORIGINS later bindings had pushed it out
    assert f"learnt before the last {MAX_ORIGINS} bindings" in render(
        listing(learner, "peer.test", NOW))


def test_origins_are_bounded() -> None:
    learner, _ = make_learner()
    learner.learn(NOW, [(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "n.test", 60)
                        for i in range(MAX_ORIGINS + 10)])
    assert len(learner.origins) == MAX_ORIGINS


def test_hostile_names_stay_one_line() -> None:
    learner, _ = make_learner()
    learner.learn(NOW, [("192.0.2.3", "evil\x1b[2j.test", 60)])
    text = render(listing(learner, "192.0.2.3", NOW))
    assert "\x1b" not in text and "evil\\x1b[2j.test" in text


def test_the_control_request() -> None:
    learner, _ = make_learner()
    learner.learn(NOW, [("192.0.2.9", "x.test", 60)])
    handler = names_handler(learner)
    reply: Any = Reply.__new__(Reply)
    answer_ = handler({"command": "names", "query": "x.test"}, reply)
    assert answer_ is not None and answer_["ok"] and answer_["names"]["total"] == 1
    assert handler({"command": "names"}, reply)["names"]["total"] == 1  # type: ignore[index]
    assert not handler({"command": "names", "query": 5}, reply)["ok"]  # type: ignore[index]


def test_normalise() -> None:
    assert normalise("2001:0DB8:0::1") == "2001:db8::1"
    assert normalise(" a.test ") == "a.test"


def test_nfguard_names_asks_the_daemon(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from nfguard import cli
    from nfguard.control import ControlServer
    from tests.unit.test_control import Loop

    learner, _ = make_learner()
    learner.clock = time.time
    learner.learn(time.time(), [("192.0.2.9", "x.test", 60)])
    loop = Loop(ControlServer(str(tmp_path / "nfguard.sock"), names_handler(learner)))
    try:
        assert cli.main(["names", "X.test", "--socket", loop.server.path]) == 0
        out = capsys.readouterr().out
        assert out.startswith("192.0.2.9  x.test  expires in 5m 5")  # 360 s, less a moment
        assert cli.main(["names", "--json", "--socket", loop.server.path]) == 0
        assert json.loads(capsys.readouterr().out)["pairs"][0]["name"] == "x.test"
    finally:
        loop.stop()
