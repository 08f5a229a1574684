"""Fuzzing: every parser, on arbitrary and on mutated valid input, either returns a result
or raises WireError, never anything else; and hostile inputs stay cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import struct
import time

import dns.exception
import dns.message
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT, EDNS0TLV

from nfguard.wire.dns import Rcode, TcpDnsStream, parse_query, parse_response, refusal
from nfguard.wire.errors import WireError
from nfguard.wire.h2 import MAX_BYTES as H2_MAX_BYTES
from nfguard.wire.h2 import PREFACE
from nfguard.wire.hpack import decode_block, huffman_decode
from nfguard.wire.http import _HEAD as HTTP_HEAD
from nfguard.wire.http import RequestHeadReader, could_start_request, head_in
from nfguard.wire.http import _fault as http_fault
from nfguard.wire.quic import (
    VERSION_1,
    VERSION_2,
    QuicHelloAssembler,
    crypto_frames,
    decrypt_initials,
    initial_keys,
)
from nfguard.wire.tls import ClientHelloReader, hello_in, parse_client_hello

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- seeds ----------------------------------------------------------------------------------

DNS_SEED = bytes(
    DNS(
        id=1,
        qr=1,
        qd=[DNSQR(qname="www.example.com")],
        an=[
            DNSRR(rrname="www.example.com", type="CNAME", ttl=60, rdata="cdn.example.net"),
            DNSRR(rrname="cdn.example.net", type="A", ttl=30, rdata="192.0.2.1"),
            DNSRR(rrname="cdn.example.net", type="AAAA", ttl=30, rdata="2001:db8::1"),
        ],
    ).compress()
)

QUERY_SEED = bytes(DNS(id=2, rd=1, qd=[DNSQR(qname="_ldap._tcp.example.org", qtype="SRV")],
                       ar=[DNSRROPT(rclass=1232, rdata=[EDNS0TLV(optcode=10, optdata=b"c" * 8)])]))


def _tls_seed() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname="fuzz.example.org")
    with contextlib.suppress(ssl.SSLWantReadError):
        sock.do_handshake()
    return outgoing.read()


TLS_SEED = _tls_seed()
HELLO_BODY = TLS_SEED[9:]
HTTP_SEED = b"GET http://a.example:80/x HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n"
DCID = bytes.fromhex("8394c8f03e515708")


def protect(payload: bytes, version: int = VERSION_1, pn: int = 0) -> bytes:
    """Protect a client Initial with the module's own keys (the fuzz target is parsing)."""
    keys = initial_keys(DCID, version)
    ptype = 0 if version == VERSION_1 else 1
    length = 4 + len(payload) + 16
    header = struct.pack("!BI", 0xC3 | ptype << 4, version) + bytes([len(DCID)]) + DCID
    header += b"\x00\x00" + struct.pack("!H", 0x4000 | length)
    pn_offset = len(header)
    header += pn.to_bytes(4, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(keys.key).encrypt(nonce, payload, header))
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(bytes(packet[pn_offset + 4 : pn_offset + 20]))
    packet[0] ^= mask[0] & 0x0F
    for i in range(4):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


QUIC_FRAMES = b"\x06\x00" + struct.pack("!H", 0x4000 | len(TLS_SEED) - 5) + TLS_SEED[5:]
QUIC_SEED = protect(QUIC_FRAMES + bytes(1100))

# --- mutation strategy ----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0xC0, 0x3F, 0x40, 0x7F, 0x80, 0x0A, 0x0D]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(i, min(len(data), i + 64)))
            data[j:j] = data[i:j]
    return bytes(data)


def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(0, len(data))), max_size=6).map(sorted)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def only_wire_errors(fn, *args):
    try:
        return fn(*args)
    except WireError:
        return None


# --- DNS ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_dns_arbitrary(data: bytes) -> None:
    only_wire_errors(parse_response, data)
    only_wire_errors(parse_response, DNS_SEED[:12] + data)


@FUZZ
@given(mutated(DNS_SEED))
def test_dns_mutated(data: bytes) -> None:
    r = only_wire_errors(parse_response, data)
    if r is not None:
        for b in r.bindings:
            assert b.ttl >= 0 and b.name and b.ip


@FUZZ
@given(st.data())
def test_dns_tcp_stream(data: st.DataObject) -> None:
    framed = struct.pack("!H", len(DNS_SEED)) + DNS_SEED
    blob = data.draw(st.one_of(mutated(framed * 2), st.binary(max_size=300)))
    stream = TcpDnsStream()
    try:
        for piece in pieces(blob, data.draw(split_points(blob))):
            for msg in stream.feed(piece):
                assert 12 <= len(msg) <= 65535
                only_wire_errors(parse_response, msg)
    except WireError:
        pass
    assert stream.pending < 2 + 65535


def _check_query(data: bytes) -> None:
    """A query read is one a real library reads alike, and its refusal answers it."""
    q = only_wire_errors(parse_query, data)
    if q is None:
        return
    assert q.question == data[12 : 12 + len(q.question)]
    assert len(q.name) <= 4 * 253 and not q.name.endswith(".")
    try:
        theirs = dns.message.from_wire(data)  # what parse_query reads, a real library reads
    except dns.exception.FormError:
        # The library also reads the EDNS options' contents (a client subnet's family...);
        # nfguard judges the question and passes the options on as they are.
        assert q.edns is not None
        theirs = dns.message.from_wire(data[:10] + b"\x00\x00" + q.question)
    assert (theirs.id, theirs.question[0].rdtype) == (q.id, q.qtype)
    assert theirs.question[0].name.to_text(omit_final_dot=True).lower() == (q.name or ".") \
        or "\\" in q.name  # the libraries escape odd bytes differently
    for rcode in Rcode:
        answer = dns.message.from_wire(refusal(q, rcode))
        assert theirs.is_response(answer) and answer.rcode() == rcode
        assert (answer.edns >= 0) == (q.edns is not None)


def test_query_seed_is_read() -> None:
    q = parse_query(QUERY_SEED)
    assert (q.name, q.qtype, q.edns) == ("_ldap._tcp.example.org", 33, (1232, 0, True))


@FUZZ
@given(st.binary(max_size=600))
def test_dns_query_arbitrary(data: bytes) -> None:
    _check_query(data)
    _check_query(QUERY_SEED[:12] + data)


@FUZZ
@given(mutated(QUERY_SEED))
def test_dns_query_mutated(data: bytes) -> None:
    _check_query(data)


@FUZZ
@given(st.data())
def test_dns_query_tcp_stream(data: st.DataObject) -> None:
    framed = struct.pack("!H", len(QUERY_SEED)) + QUERY_SEED
    blob = data.draw(st.one_of(mutated(framed * 3), st.binary(max_size=300)))
    stream = TcpDnsStream()
    try:
        for piece in pieces(blob, data.draw(split_points(blob))):
            for msg in stream.feed(piece):
                _check_query(msg)
    except WireError:
        pass
    assert stream.pending < 2 + 65535


# --- TLS ------------------------------------------------------------------------------------


def _feed_reader(reader, chunks):
    result = None
    try:
        for chunk in chunks:
            result = reader.feed(chunk)
    except WireError:
        return None
    return result


@FUZZ
@given(st.binary(max_size=600), st.data())
def test_tls_reader_arbitrary(blob: bytes, data: st.DataObject) -> None:
    _feed_reader(ClientHelloReader(), pieces(blob, data.draw(split_points(blob))))
    prefixed = b"\x16\x03\x01" + blob
    _feed_reader(ClientHelloReader(), pieces(prefixed, data.draw(split_points(prefixed))))


@FUZZ
@given(st.data())
def test_tls_reader_mutated(data: st.DataObject) -> None:
    blob = data.draw(mutated(TLS_SEED))
    result = _feed_reader(ClientHelloReader(), pieces(blob, data.draw(split_points(blob))))
    if result is not None and result.sni is not None:
        assert result.sni == result.sni.lower() and not result.sni.endswith(".")


@FUZZ
@given(st.lists(st.integers(0, len(TLS_SEED) - 5), max_size=32), st.data())
def test_tls_empty_records_anywhere_change_nothing(where: list[int], data: st.DataObject) -> None:
    hs = TLS_SEED[5:]
    cuts = sorted(where)
    stream = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
                      for part in pieces(hs, cuts))  # empty pieces are empty records
    result = _feed_reader(ClientHelloReader(), pieces(stream, data.draw(split_points(stream))))
    assert result is not None and result.sni == "fuzz.example.org"


@FUZZ
@given(mutated(HELLO_BODY))
def test_tls_parse_body_mutated(body: bytes) -> None:
    only_wire_errors(parse_client_hello, body)


# --- HTTP -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600), st.data())
def test_http_arbitrary(blob: bytes, data: st.DataObject) -> None:
    _feed_reader(RequestHeadReader(), pieces(blob, data.draw(split_points(blob))))
    text = b"GET / HTTP/1.1\r\n" + blob + b"\r\n\r\n"
    _feed_reader(RequestHeadReader(), [text])


@FUZZ
@given(st.data())
def test_http_mutated(data: st.DataObject) -> None:
    blob = data.draw(mutated(HTTP_SEED))
    result = _feed_reader(RequestHeadReader(), pieces(blob, data.draw(split_points(blob))))
    if result is not None and result.host is not None:
        host = result.host
        assert host == host.lower() and not host.endswith(".")


def mostly(good: bytes, *bad: bytes) -> st.SearchStrategy[bytes]:
    """`good` about four times in five, else one of `bad`."""
    return st.sampled_from([good] * (4 * len(bad)) + list(bad))


# Heads built from request-line and field pieces, each mostly valid, so that one head in a
# few is valid as a whole and the rest fail in one place or several. No empty field: the
# reader cuts a head at its first empty line.
HEAD_LINES = st.tuples(
    st.sampled_from([b"", b"\r\n", b"\n\r\n"]),
    mostly(b"GET", b"G\xe9T", b"", b"M" * 33),
    mostly(b" ", b"  "),
    st.sampled_from([b"/", b"http://u@a.example/", b"a.example:443", b"/x y", b"/\x7f"]),
    mostly(b" HTTP/1.1", b" HTTP/11", b" http/1.0", b""),
    st.lists(mostly(b"Host: a.example", b"HOST:\tA.example.", b"X-A: \x80\xff", b" folded",
                    b"Bad Name: x", b"Host : a", b"X: \x00", b"X: a\rb", b"NoColon", b":x"),
             max_size=4),
    st.lists(mostly(b"\r\n", b"\n", b"\r"), min_size=5, max_size=5),
    st.sampled_from([b"\r\n", b"\n"]),  # the empty line the reader cut the head at
)


def _head(parts: tuple) -> bytes:
    """The head HEAD_LINES' pieces make."""
    lead, method, space, target, version, fields, ends, last = parts
    head = lead + method + space + target + version + ends[0]
    head += b"".join(field + end for field, end in zip(fields, ends[1:], strict=False))
    return head + last


@FUZZ
@given(HEAD_LINES)
def test_http_head_rule_and_fault_finder_agree(parts: tuple) -> None:
    """The head's one regular expression and the walk that names a rejected head's fault
    must judge alike: every head the expression rejects has a named fault, and no head it
    accepts has one."""
    head = _head(parts)
    assume(head[:-len(parts[-1])].endswith(b"\n"))  # else the reader had not cut it here
    fault = http_fault(head)
    if HTTP_HEAD.fullmatch(head) is None:
        assert fault != "http: malformed request head", head
    else:
        assert fault == "http: malformed request head", (head, fault)


@FUZZ
@given(st.binary(max_size=64))
def test_could_start_request_never_rejects_what_the_reader_would_read(data: bytes) -> None:
    if not could_start_request(data):
        try:
            RequestHeadReader().feed(data)
        except WireError:
            return
        raise AssertionError(f"the reader took {data!r}")


# --- a stream's first bytes read at once ----------------------------------------------------


def _reads_as_the_reader(whole, reader, data: bytes) -> None:
    """`whole` (hello_in, head_in) gives what `reader` fed `data` gives, or the error it
    raises, whenever it does not leave `data` to the reader (None)."""
    try:
        found = whole(data)
    except WireError:
        with pytest.raises(WireError):
            reader().feed(data)
        return
    if found is not None:
        assert reader().feed(data) == found


def test_whole_hello_and_head_are_read_at_once() -> None:
    assert hello_in(TLS_SEED) == ClientHelloReader().feed(TLS_SEED)
    assert hello_in(TLS_SEED).sni == "fuzz.example.org"
    assert head_in(HTTP_SEED) == RequestHeadReader().feed(HTTP_SEED)
    assert head_in(HTTP_SEED).host == "a.example"
    assert head_in(b"\r\n" * 10 + HTTP_SEED) == head_in(HTTP_SEED)
    assert head_in(b"\n" * 21 + HTTP_SEED) is None  # past MAX_LEADING: the reader rejects it


def _in_record(body: bytes, extra: bytes) -> bytes:
    """A ClientHello of `body` in one record, `extra` after it in the record."""
    hs = b"\x01" + len(body).to_bytes(3, "big") + body + extra
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


@FUZZ
@given(st.one_of(mutated(TLS_SEED), st.binary(max_size=600),
                 st.binary(max_size=600).map(lambda b: b"\x16\x03\x01" + b),
                 st.builds(_in_record, mostly(HELLO_BODY, b"", HELLO_BODY[:-1]),
                           st.binary(max_size=8)),
                 st.builds(_in_record, mutated(HELLO_BODY), st.binary(max_size=8))),
       st.binary(max_size=16))
def test_hello_in_reads_as_the_reader(blob: bytes, after: bytes) -> None:
    _reads_as_the_reader(hello_in, ClientHelloReader, blob + after)


# Heads that match the head's rule, with Host fields and targets of every kind.
WELL_FORMED_HEADS = st.builds(
    lambda method, target, version, fields, end: (
        method + b" " + target + b" " + version + end
        + b"".join(field + end for field in fields) + end),
    st.sampled_from([b"GET", b"POST", b"OPTIONS", b"CONNECT", b"PRI"]),
    st.sampled_from([b"/", b"/x?y", b"*", b"http://A.example:80/", b"HTTPS://a.example.",
                     b"https://u@a.example/", b"a.example:443", b"[::1]:443", b"a.example"]),
    mostly(b"HTTP/1.1", b"HTTP/1.0"),
    st.lists(st.sampled_from([b"Host: a.example", b"host:\tA.EXAMPLE. ", b"HOST:a.example:80",
                              b"Host: [::1]:443", b"Host:", b"Host: b.example", b"Host: a b",
                              b"Accept: */*", b"X-Host: c.example", b"Hostx: c.example"]),
             max_size=3),
    st.sampled_from([b"\r\n", b"\n"]),
)


@FUZZ
@given(st.sampled_from([b"", b"", b"\n", b"\r\n" * 10, b"\n" * 21, b"\r\n" * 11, PREFACE,
                        PREFACE[:5]]),
       st.one_of(WELL_FORMED_HEADS, mutated(HTTP_SEED), st.binary(max_size=600),
                 HEAD_LINES.map(_head)),
       st.binary(max_size=16))
def test_head_in_reads_as_the_reader(lead: bytes, blob: bytes, after: bytes) -> None:
    _reads_as_the_reader(head_in, RequestHeadReader, lead + blob + after)


# --- h2c and HPACK --------------------------------------------------------------------------

# RFC 7541 C.4: three Huffman-coded requests of one connection, back to back
HPACK_SEED = bytes.fromhex(
    "828684418cf1e3c2e5f23a6ba0ab90f4ff" "828684be5886a8eb10649cbf"
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") \
        + payload


H2_SEED = (PREFACE + _h2_frame(4, 0, 0, bytes.fromhex("000300000064"))
           + _h2_frame(8, 0, 0, bytes.fromhex("00100000"))
           + _h2_frame(1, 0x1 | 0x8 | 0x20, 1, b"\x02" + bytes(4) + b"\x10"
                       + HPACK_SEED[:9] + b"\x00\x00")
           + _h2_frame(9, 0x4, 1, HPACK_SEED[9:17]))


def test_h2_seed_is_read() -> None:
    head = RequestHeadReader().feed(H2_SEED)
    assert head is not None and head.host == "www.example.com"


@FUZZ
@given(st.binary(max_size=600))
def test_hpack_arbitrary(data: bytes) -> None:
    only_wire_errors(decode_block, data)
    only_wire_errors(huffman_decode, data)


@FUZZ
@given(mutated(HPACK_SEED))
def test_hpack_mutated(data: bytes) -> None:
    fields = only_wire_errors(decode_block, data)
    if fields is not None:
        assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in fields)


@FUZZ
@given(st.binary(max_size=600), st.data())
def test_h2_arbitrary(blob: bytes, data: st.DataObject) -> None:
    stream = PREFACE + blob
    _feed_reader(RequestHeadReader(), pieces(stream, data.draw(split_points(stream))))


@FUZZ
@given(st.data())
def test_h2_mutated(data: st.DataObject) -> None:
    blob = data.draw(mutated(H2_SEED))
    result = _feed_reader(RequestHeadReader(), pieces(blob, data.draw(split_points(blob))))
    if result is not None and result.host is not None:
        assert result.host == result.host.lower() and not result.host.endswith(".")


# --- QUIC -----------------------------------------------------------------------------------


def _assemble(datagrams: list[bytes]) -> None:
    asm = QuicHelloAssembler()
    try:
        for d in datagrams:
            asm.feed(d)
    except WireError:
        pass


@FUZZ
@given(st.binary(max_size=1300))
def test_quic_arbitrary(blob: bytes) -> None:
    _assemble([blob])
    _assemble([b"\xc0\x00\x00\x00\x01" + blob])
    only_wire_errors(decrypt_initials, blob)
    only_wire_errors(crypto_frames, blob)


@FUZZ
@given(mutated(QUIC_SEED))
def test_quic_mutated_ciphertext(datagram: bytes) -> None:
    _assemble([datagram])


@FUZZ
@given(mutated(QUIC_FRAMES + bytes(64)), st.sampled_from([VERSION_1, VERSION_2]))
def test_quic_mutated_plaintext_frames(frames: bytes, version: int) -> None:
    # Mutate the decrypted payload and protect it properly, so the frame parser and the
    # CRYPTO reassembly (not just the AEAD) see the hostile bytes.
    _assemble([protect(frames, version) if frames else b"", protect(QUIC_FRAMES, version, pn=1)])
    only_wire_errors(crypto_frames, frames)


# --- hostile inputs stay cheap --------------------------------------------------------------


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    only_wire_errors(fn, *args)
    return time.perf_counter() - t


def test_dns_compression_bomb_is_cheap() -> None:
    qname = b"\x01a" * 127 + b"\x00"
    n_rr = (65535 - 12 - len(qname) - 4) // 16
    hdr = struct.pack("!HHHHHH", 1, 0x8180, 1, n_rr, 0, 0)
    # thousands of records whose owner points at a 127-label name, or into its middle
    to_start = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + struct.pack("!I", i) for i in range(n_rr)
    )
    to_middle = b"".join(
        struct.pack("!HHHIH", 0xC000 | (12 + 2 * (i % 127)), 16, 1, 60, 4) + b"abcd"
        for i in range(n_rr)
    )
    for rrs in (to_start, to_middle):
        msg = hdr + qname + b"\x00\x01\x00\x01" + rrs
        assert len(msg) == 65535
        assert _timed(parse_response, msg) < 0.25


def test_dns_query_of_16k_empty_options_is_cheap() -> None:
    question = b"\x01a\x00\x00\x01\x00\x01"
    options = b"\x00\x0c\x00\x00" * ((65535 - 12 - len(question) - 11) // 4)
    msg = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 1) + question + b"\x00" + struct.pack(
        "!HHIH", 41, 1232, 0, len(options)) + options
    assert len(msg) > 65500 and parse_query(msg).edns is not None
    assert _timed(parse_query, msg) < 0.1


def test_tls_one_byte_records_one_byte_segments_is_linear() -> None:
    hs = TLS_SEED[5:]
    stream = b"".join(b"\x16\x03\x01\x00\x01" + hs[i : i + 1] for i in range(len(hs)))
    reader = ClientHelloReader()
    t = time.perf_counter()
    result = None
    for i in range(len(stream)):
        result = reader.feed(stream[i : i + 1])
    assert result is not None and result.sni == "fuzz.example.org"
    assert time.perf_counter() - t < 0.5


def test_http_byte_by_byte_near_the_bound_is_linear() -> None:
    blob = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2700
    reader = RequestHeadReader()
    t = time.perf_counter()
    for i in range(len(blob)):
        assert reader.feed(blob[i : i + 1]) is None
    assert time.perf_counter() - t < 0.5


def test_quic_many_tiny_crypto_frames_is_bounded() -> None:
    frames = b"".join(b"\x06" + bytes([0x40 | i >> 8, i & 0xFF]) + b"\x01\x00" for i in range(300))
    t = time.perf_counter()
    _assemble([protect(frames + bytes(100), pn=p) for p in range(5)])
    assert time.perf_counter() - t < 0.5


def test_h2_byte_by_byte_near_the_bound_is_linear() -> None:
    start = PREFACE + _h2_frame(4, 0, 0, b"")
    blob = start + _h2_frame(6, 0, 0, bytes(8)) * ((H2_MAX_BYTES - len(start)) // 17 + 1)
    reader = RequestHeadReader()
    t = time.perf_counter()
    with pytest.raises(WireError, match="16 KiB"):
        for i in range(len(blob)):
            assert reader.feed(blob[i : i + 1]) is None
    assert time.perf_counter() - t < 0.5


def test_hpack_largest_huffman_block_is_cheap() -> None:
    value = b"\xff\x80\x01" + b"\x00" * 255  # Huffman, 255 bytes: 408 "0"s of 5 bits
    t = time.perf_counter()
    fields = decode_block((b"\x00\x01x" + value) * 63)
    assert time.perf_counter() - t < 0.1 and len(fields) == 63 and fields[0][1] == b"0" * 408


def test_tls_64_kib_hello_in_one_byte_segments_is_linear() -> None:
    body = HELLO_BODY
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    extension = b"\x77\x77" + (60000).to_bytes(2, "big") + bytes(60000)
    exts = body[pos + 2 :] + extension
    big = body[:pos] + len(exts).to_bytes(2, "big") + exts
    hs = b"\x01" + len(big).to_bytes(3, "big") + big
    stream = b"".join(b"\x16\x03\x01" + len(hs[i : i + 16384]).to_bytes(2, "big")
                      + hs[i : i + 16384] for i in range(0, len(hs), 16384))
    reader = ClientHelloReader()
    t = time.perf_counter()
    results = [reader.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert time.perf_counter() - t < 1.0
    assert results[-1] is not None and results[-1].sni == "fuzz.example.org"
