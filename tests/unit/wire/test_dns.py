"""DNS response and query parsing, refusals (checked with dnspython), and DNS-over-TCP
framing."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from nfguard.wire.dns import (
    MAX_ANSWERS,
    MAX_BINDINGS,
    MAX_CNAME_HOPS,
    MAX_LABELS_WALKED,
    NameBinding,
    Rcode,
    TcpDnsStream,
    parse_query,
    parse_response,
    refusal,
)
from nfguard.wire.errors import WireError


def answer(*rrs: DNSRR, qname: str = "www.example.com", **kw: object) -> bytes:
    fields = {"id": 0x1234, "qr": 1, "rd": 1, "ra": 1, "qd": [DNSQR(qname=qname)], **kw}
    if rrs:
        fields["an"] = list(rrs)
    return bytes(DNS(**fields))


def cname(owner: str, target: str, ttl: int) -> DNSRR:
    return DNSRR(rrname=owner, type="CNAME", ttl=ttl, rdata=target)


def a(owner: str, ip: str, ttl: int) -> DNSRR:
    return DNSRR(rrname=owner, type="A", ttl=ttl, rdata=ip)


def aaaa(owner: str, ip: str, ttl: int) -> DNSRR:
    return DNSRR(rrname=owner, type="AAAA", ttl=ttl, rdata=ip)


CHAIN = answer(
    cname("www.example.com", "cdn.example.net", 300),
    cname("cdn.example.net", "edge.cdn.net", 60),
    a("edge.cdn.net", "1.2.3.4", 120),
    a("edge.cdn.net", "1.2.3.5", 20),
    aaaa("edge.cdn.net", "2001:0db8:0:0::1", 30),
)


def as_set(msg: bytes) -> set[NameBinding]:
    return set(parse_response(msg).bindings)


def test_cname_chain_binds_every_name_with_min_ttl() -> None:
    r = parse_response(CHAIN)
    assert r.id == 0x1234 and r.rcode == 0 and not r.truncated
    assert r.question == "www.example.com"
    assert set(r.bindings) == {
        NameBinding("1.2.3.4", "edge.cdn.net", 120),
        NameBinding("1.2.3.4", "cdn.example.net", 60),
        NameBinding("1.2.3.4", "www.example.com", 60),
        NameBinding("1.2.3.5", "edge.cdn.net", 20),
        NameBinding("1.2.3.5", "cdn.example.net", 20),
        NameBinding("1.2.3.5", "www.example.com", 20),
        NameBinding("2001:db8::1", "edge.cdn.net", 30),  # canonical text form
        NameBinding("2001:db8::1", "cdn.example.net", 30),
        NameBinding("2001:db8::1", "www.example.com", 30),
    }
    assert len(r.bindings) == 9  # no duplicates


def test_min_ttl_is_taken_from_the_name_down_the_chain() -> None:
    # The first hop has the smallest TTL: only the query name is limited by it.
    msg = answer(
        cname("www.example.com", "mid.example.com", 5),
        cname("mid.example.com", "end.example.com", 500),
        a("end.example.com", "10.0.0.1", 400),
    )
    got = {b.name: b.ttl for b in parse_response(msg).bindings}
    assert got == {"www.example.com": 5, "mid.example.com": 400, "end.example.com": 400}


def test_compressed_and_uncompressed_give_the_same_bindings() -> None:
    pkt = DNS(CHAIN)
    compressed = bytes(pkt.compress())
    assert len(compressed) < len(CHAIN)
    assert b"\xc0" in compressed[12:]
    assert as_set(compressed) == as_set(CHAIN)


def test_reordered_answers_and_case_and_trailing_dot() -> None:
    msg = answer(
        a("Edge.CDN.net.", "1.2.3.4", 50),
        cname("WWW.Example.COM.", "edge.cdn.net", 70),
        qname="WWW.EXAMPLE.COM.",
    )
    r = parse_response(msg)
    assert r.question == "www.example.com"
    assert set(r.bindings) == {
        NameBinding("1.2.3.4", "edge.cdn.net", 50),
        NameBinding("1.2.3.4", "www.example.com", 50),
    }


def test_unrelated_and_multiple_records() -> None:
    msg = answer(
        a("www.example.com", "192.0.2.1", 10),
        a("www.example.com", "192.0.2.2", 10),
        a("other.example.org", "192.0.2.3", 10),
        DNSRR(rrname="www.example.com", type="TXT", ttl=10, rdata="hello"),
        DNSRR(rrname="www.example.com", type="A", rclass="CH", ttl=10, rdata="192.0.2.9"),
    )
    assert as_set(msg) == {
        NameBinding("192.0.2.1", "www.example.com", 10),
        NameBinding("192.0.2.2", "www.example.com", 10),
        NameBinding("192.0.2.3", "other.example.org", 10),
    }


def test_additional_and_authority_sections_are_never_bound() -> None:
    msg = answer(
        a("www.example.com", "192.0.2.1", 10),
        ns=[DNSRR(rrname="example.com", type="A", ttl=10, rdata="192.0.2.66")],
        ar=[DNSRR(rrname="github.com", type="A", ttl=10, rdata="192.0.2.77")],
    )
    assert as_set(msg) == {NameBinding("192.0.2.1", "www.example.com", 10)}


def test_flags_rcode_truncation_and_no_question() -> None:
    r = parse_response(bytes(DNS(id=9, qr=1, rcode=3, tc=1, qd=[DNSQR(qname="nx.example")])))
    assert (r.id, r.rcode, r.truncated, r.question, r.bindings) == (9, 3, True, "nx.example", ())
    r = parse_response(bytes(DNS(id=1, qr=1, qd=[])))
    assert r.question is None


def test_ttl_with_high_bit_counts_as_zero() -> None:
    msg = bytearray(answer(a("www.example.com", "192.0.2.1", 0x7FFFFFFF)))
    i = msg.rfind(b"\x7f\xff\xff\xff")
    msg[i] = 0x80
    assert parse_response(bytes(msg)).bindings == (NameBinding("192.0.2.1", "www.example.com", 0),)


def test_query_and_other_opcodes_are_rejected() -> None:
    with pytest.raises(WireError):
        parse_response(bytes(DNS(qr=0, qd=[DNSQR(qname="example.com")])))
    with pytest.raises(WireError):
        parse_response(bytes(DNS(qr=1, opcode=5, qd=[DNSQR(qname="example.com")])))


def test_every_truncation_raises() -> None:
    for cut in range(len(CHAIN)):
        with pytest.raises(WireError):
            parse_response(CHAIN[:cut])


# --- hand-built messages for the hostile cases --------------------------------------------

HDR = struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0)  # response, 0 questions, 1 answer


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def test_pointer_to_itself_is_rejected() -> None:
    # The owner name is a pointer to offset 12: itself.
    msg = HDR + rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04")
    with pytest.raises(WireError, match="backwards"):
        parse_response(msg)


def test_pointer_loops_are_rejected() -> None:
    # label "a" then a pointer back to the start of the same name: a.a.a.a... forever
    msg = HDR + rr(b"\x01a\xc0\x0c", 1, b"\x01\x02\x03\x04")
    with pytest.raises(WireError, match="backwards"):
        parse_response(msg)
    # any loop between two names needs a forward pointer somewhere: rejected as such
    msg = HDR + rr(b"\xc0\x20", 1, b"\x01\x02\x03\x04")
    with pytest.raises(WireError, match="backwards"):
        parse_response(msg)
    # a pointer back into the header is legal but lands on a 0 byte: the root, never bound
    msg = HDR + rr(b"\xc0\x05", 1, b"\x01\x02\x03\x04")
    assert parse_response(msg).bindings == ()


def test_valid_backward_pointer_chain() -> None:
    q = b"\x03www\x07example\x03com\x00"
    hdr = struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0)
    qsec = q + b"\x00\x01\x00\x01"
    # cdn.<ptr to example.com at 16> CNAME target; "www" owner is a pointer to 12
    target = b"\x03cdn\xc0\x10"
    msg = hdr + qsec + rr(b"\xc0\x0c", 5, target) + rr(b"\x03cdn\xc0\x10", 1, b"\x0a\x00\x00\x01")
    got = as_set(msg)
    assert got == {
        NameBinding("10.0.0.1", "cdn.example.com", 60),
        NameBinding("10.0.0.1", "www.example.com", 60),
    }


def test_label_and_name_bounds() -> None:
    with pytest.raises(WireError, match="label type"):
        parse_response(HDR + rr(b"\x40" + b"a" * 64 + b"\x00", 1, b"\x01\x02\x03\x04"))
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets
    with pytest.raises(WireError, match="too long"):
        parse_response(HDR + rr(long_name, 1, b"\x01\x02\x03\x04"))
    ok_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"a" * 61 + b"\x00"
    assert len(ok_name) == 255
    assert parse_response(HDR + rr(ok_name, 1, b"\x01\x02\x03\x04")).bindings


def test_bad_rdata_lengths() -> None:
    with pytest.raises(WireError):
        parse_response(HDR + rr(b"\x01a\x00", 1, b"\x01\x02\x03\x04\x05"))
    with pytest.raises(WireError):
        parse_response(HDR + rr(b"\x01a\x00", 28, b"\x00" * 15))
    # CNAME whose target name does not fill the rdata
    with pytest.raises(WireError):
        parse_response(HDR + rr(b"\x01a\x00", 5, b"\x01b\x00\x00"))


def test_label_with_a_dot_cannot_pose_as_two_labels() -> None:
    msg = HDR + rr(b"\x0agithub.com\x00", 1, b"\x01\x02\x03\x04")
    (b,) = parse_response(msg).bindings
    assert b.name == "github\\046com"
    msg = HDR + rr(b"\x03a b\x03com\x00", 1, b"\x01\x02\x03\x04")
    assert parse_response(msg).bindings[0].name == "a\\032b.com"


def test_cname_loop_and_overlong_chain_bind_nothing_extra() -> None:
    msg = answer(
        cname("a.example", "b.example", 60),
        cname("b.example", "a.example", 60),
        a("c.example", "192.0.2.1", 60),
        qname="a.example",
    )
    assert as_set(msg) == {NameBinding("192.0.2.1", "c.example", 60)}
    hops = MAX_CNAME_HOPS + 2
    rrs = [cname(f"n{i}.example", f"n{i + 1}.example", 60) for i in range(hops)]
    rrs.append(a(f"n{hops}.example", "192.0.2.2", 60))
    names = {b.name for b in parse_response(answer(*rrs, qname="n0.example")).bindings}
    assert f"n{hops}.example" in names and f"n{hops - 1}.example" in names
    assert "n0.example" not in names and "n1.example" not in names  # beyond the hop bound


def test_second_cname_for_an_owner_is_ignored() -> None:
    msg = answer(
        cname("www.example.com", "good.example.com", 60),
        cname("www.example.com", "evil.example.com", 60),
        a("good.example.com", "192.0.2.1", 60),
        a("evil.example.com", "192.0.2.66", 60),
    )
    got = {(b.ip, b.name) for b in parse_response(msg).bindings}
    assert ("192.0.2.1", "www.example.com") in got
    assert ("192.0.2.66", "www.example.com") not in got


def test_binding_fan_out_is_bounded() -> None:
    aliases = 40
    rrs = [cname(f"x{i}.e", "t.e", 60) for i in range(aliases)]
    rrs += [a("t.e", f"10.0.0.{i}", 60) for i in range(MAX_ANSWERS - aliases)]
    bindings = parse_response(answer(*rrs, qname="x0.e")).bindings
    assert len(bindings) == MAX_BINDINGS  # of 24 x 41; the rest is not learnt
    assert len(set(bindings)) == MAX_BINDINGS
    first = {b for b in bindings if b.ip == "10.0.0.0"}
    assert len(first) == aliases + 1  # the first addresses keep all their names


def test_only_the_first_answers_are_read() -> None:
    rrs = [a(f"h{i}.example", f"10.0.0.{i}", 60) for i in range(140)]
    got = parse_response(answer(*rrs, qname="h0.example")).bindings
    assert {b.name for b in got} == {f"h{i}.example" for i in range(MAX_ANSWERS)}
    # past the bound even garbage is not looked at
    msg = answer(*rrs[:MAX_ANSWERS], qname="h0.example")
    msg = msg[:6] + struct.pack("!H", MAX_ANSWERS + 5) + msg[8:] + b"\xff" * 40
    assert len(parse_response(msg).bindings) == MAX_ANSWERS


def test_labels_walked_are_bounded() -> None:
    def name(i: int) -> str:
        return ".".join("abcdefghijklmnopqrstuvwxyz"[(i + j) % 26] for j in range(23)) + ".ev"

    rrs = [a(name(i), f"10.0.0.{i}", 60) for i in range(MAX_ANSWERS)]
    got = parse_response(answer(*rrs, qname="q.ev")).bindings
    read = (MAX_LABELS_WALKED - 2) // 24  # the question takes 2 labels
    assert [b.ip for b in got] == [f"10.0.0.{i}" for i in range(read)]
    # a CNAME target past the budget ends the reading too
    rrs = [cname(name(i), name(i + 1), 60) for i in range(20)]
    assert parse_response(answer(*rrs, a(name(20), "10.0.0.1", 60), qname="q.ev")).bindings == ()
    # names by pointer to a name already read cost nothing: 64 records fit
    msg = bytes(DNS(id=1, qr=1, qd=[DNSQR(qname=name(0))],
                    an=[a(name(0), f"10.0.0.{i}", 60) for i in range(MAX_ANSWERS)]).compress())
    assert msg.count(b"\xc0\x0c") == MAX_ANSWERS
    assert len(parse_response(msg).bindings) == MAX_ANSWERS


def test_one_question_at_most() -> None:
    two = bytes(DNS(id=1, qr=1, qd=[DNSQR(qname="a.example"), DNSQR(qname="b.example")],
                    an=[a("a.example", "192.0.2.1", 60)]))
    with pytest.raises(WireError, match="question"):
        parse_response(two)


def test_addresses_are_written_as_packets_have_them() -> None:
    msg = answer(aaaa("www.example.com", "::ffff:192.0.2.1", 60),
                 aaaa("www.example.com", "2001:DB8:0:0:1::1", 60), a("www.example.com",
                                                                    "192.0.2.9", 60))
    ips = [b.ip for b in parse_response(msg).bindings]
    assert ips == [socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip))
                   for ip in ("::ffff:192.0.2.1", "2001:db8::1:0:0:1")] + ["192.0.2.9"]


# --- TCP framing ---------------------------------------------------------------------------

M1 = CHAIN
M2 = answer(a("www.example.com", "192.0.2.1", 10))
STREAM = struct.pack("!H", len(M1)) + M1 + struct.pack("!H", len(M2)) + M2


def test_tcp_every_two_and_three_way_split() -> None:
    n = len(STREAM)
    for i in range(n + 1):
        s = TcpDnsStream()
        assert s.feed(STREAM[:i]) + s.feed(STREAM[i:]) == [M1, M2]
        assert s.pending == 0
    for i in range(0, n + 1, 7):
        for j in range(i, n + 1, 5):
            s = TcpDnsStream()
            got = s.feed(STREAM[:i]) + s.feed(STREAM[i:j]) + s.feed(STREAM[j:])
            assert got == [M1, M2]


def test_tcp_byte_by_byte_and_message_boundaries() -> None:
    s = TcpDnsStream()
    out: list[tuple[int, bytes]] = []
    for k in range(len(STREAM)):
        for m in s.feed(STREAM[k : k + 1]):
            out.append((k, m))
    assert out == [(len(M1) + 1, M1), (len(STREAM) - 1, M2)]
    assert parse_response(out[0][1]).bindings


def test_tcp_bad_lengths_and_bound() -> None:
    s = TcpDnsStream()
    with pytest.raises(WireError):
        s.feed(b"\x00\x00")
    with pytest.raises(WireError):  # the stream stays failed
        s.feed(struct.pack("!H", len(M2)) + M2)
    s = TcpDnsStream(max_message=512)
    with pytest.raises(WireError):
        s.feed(b"\x02\x01")
    s = TcpDnsStream()
    s.feed(b"\xff\xff" + b"\x00" * 65000)
    assert s.pending == 65002
    assert s.feed(b"\x00" * 535) == [b"\x00" * 65535]
    assert s.pending == 0


# --- queries and their refusal ------------------------------------------------------------


def query(name: str = "www.Example.COM.", rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def test_a_query_is_read() -> None:
    q = query(use_edns=0, want_dnssec=True, payload=4096)
    q.flags |= dns.flags.CD
    p = parse_query(q.to_wire())
    assert (p.id, p.name, p.qtype, p.qclass, p.opcode) == (q.id, "www.example.com", 1, 1, 0)
    assert p.flags & 0x0100 and p.flags & 0x0010  # RD, CD
    assert p.edns is not None and (p.edns.payload, p.edns.version, p.edns.dnssec_ok) == (
        4096, 0, True)
    assert p.question == b"\x03www\x07Example\x03COM\x00\x00\x01\x00\x01"  # as sent
    bare = parse_query(query("_ldap._tcp.example.org", "SRV", use_edns=False).to_wire())
    assert (bare.name, bare.qtype, bare.edns) == ("_ldap._tcp.example.org", 33, None)


def test_names_are_read_as_answers_read_them() -> None:
    assert parse_query(query(".", "NS").to_wire()).name == ""
    odd = dns.message.make_query(dns.name.Name([b"a.b", b"C\\", b"example", b""]), "TXT")
    assert parse_query(odd.to_wire()).name == "a\\046b.c\\092.example"


def test_edns_options_are_allowed() -> None:
    q = query(use_edns=0, options=[dns.edns.GenericOption(10, b"\x01" * 8),  # a cookie
                                   dns.edns.GenericOption(12, bytes(40))])  # padding
    assert parse_query(q.to_wire()).edns is not None


def _raw(flags: int = 0x0100, counts: tuple[int, int, int, int] = (1, 0, 0, 0),
         body: bytes = b"\x01a\x00\x00\x01\x00\x01") -> bytes:
    return struct.pack("!HHHHHH", 7, flags, *counts) + body


OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
ODD_QUERIES = {
    "a response": _raw(flags=0x8100),
    "opcode NOTIFY": _raw(flags=0x2000),
    "opcode UPDATE": _raw(flags=0x2800),
    "an rcode": _raw(flags=0x0105),
    "no question": _raw(counts=(0, 0, 0, 0), body=b""),
    "two questions": _raw(counts=(2, 0, 0, 0), body=b"\x01a\x00\x00\x01\x00\x01" * 2),
    "an answer": _raw(counts=(1, 1, 0, 0), body=b"\x01a\x00\x00\x01\x00\x01\xc0\x0c"
                      + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)),
    "an authority record": _raw(counts=(1, 0, 1, 0)),
    "two additional records": _raw(counts=(1, 0, 0, 2), body=_raw()[12:] + OPT + OPT),
    "an additional record not OPT": _raw(
        counts=(1, 0, 0, 1), body=_raw()[12:] + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4)
        + bytes(4)),
    "an OPT not owned by the root": _raw(counts=(1, 0, 0, 1), body=_raw()[12:] + b"\x01a"
                                         + OPT[1:]),
    "an extended rcode": _raw(counts=(1, 0, 0, 1), body=_raw()[12:] + b"\x00"
                              + struct.pack("!HHIH", 41, 1232, 1 << 24, 0)),
    "an option past the OPT data": _raw(counts=(1, 0, 0, 1), body=_raw()[12:] + b"\x00"
                                        + struct.pack("!HHIHHH", 41, 1232, 0, 4, 10, 8)),
    "a compressed name": _raw(body=b"\xc0\x04\x00\x01\x00\x01"),
    "bytes after the question": _raw() + b"tunnel",
    "bytes after the OPT": _raw(counts=(1, 0, 0, 1), body=_raw()[12:] + OPT + b"x"),
    "a truncated question": _raw()[:-1],
    "a short header": _raw()[:11],
    "a name past the end": _raw(body=b"\x05ab"),
}


@pytest.mark.parametrize("what", ODD_QUERIES)
def test_anything_odd_is_a_wire_error(what: str) -> None:
    with pytest.raises(WireError):
        parse_query(ODD_QUERIES[what])


def test_the_odd_ones_differ_from_a_good_query_only_in_their_oddity() -> None:
    assert parse_query(_raw()).name == "a"
    assert parse_query(_raw(counts=(1, 0, 0, 1), body=_raw()[12:] + OPT)).edns is not None


@pytest.mark.parametrize("rcode", [Rcode.REFUSED, Rcode.NXDOMAIN])
@pytest.mark.parametrize("edns", [False, True])
def test_the_refusal_is_a_valid_response_to_the_query(rcode: Rcode, edns: bool) -> None:
    q = query("Secret.Attacker.example.", "TXT", use_edns=0 if edns else False,
              want_dnssec=edns, options=[dns.edns.GenericOption(10, bytes(8))] if edns else None)
    q.flags |= dns.flags.CD
    r = dns.message.from_wire(refusal(parse_query(q.to_wire()), rcode))
    assert q.is_response(r)  # id, QR, opcode and the question
    assert r.rcode() == rcode and r.opcode() == dns.opcode.QUERY
    assert r.flags & dns.flags.RD and r.flags & dns.flags.CD and r.flags & dns.flags.RA
    assert str(r.question[0].name) == "Secret.Attacker.example."  # case kept (0x20)
    assert not r.answer and not r.authority
    if edns:
        assert r.edns == 0 and r.ednsflags & dns.flags.DO
        assert [(o.code, o.text) for o in r.extended_errors()] == [(15, "nfguard policy")]
        assert all(o.otype == dns.edns.EDE for o in r.options)  # the cookie is not echoed
    else:
        assert r.edns == -1 and not r.additional


def test_a_query_without_rd_gets_a_refusal_without_it() -> None:
    q = query()
    q.flags &= ~dns.flags.RD
    r = dns.message.from_wire(refusal(parse_query(q.to_wire())))
    assert q.is_response(r) and not r.flags & dns.flags.RD and r.rcode() == dns.rcode.REFUSED


def test_pipelined_tcp_queries_are_split_and_read_in_order() -> None:
    queries = [query(f"q{i}.example", "AAAA" if i % 2 else "A") for i in range(3)]
    stream = b"".join(q.to_wire(prepend_length=True) for q in queries)
    s = TcpDnsStream()
    got = s.feed(stream[:5]) + s.feed(stream[5:-3]) + s.feed(stream[-3:])
    assert [(parse_query(m).id, parse_query(m).name) for m in got] == [
        (q.id, f"q{i}.example") for i, q in enumerate(queries)]
