"""ClientHello parsing and reassembly, on hellos produced by the real `ssl` module."""

from __future__ import annotations

import itertools
import random
import ssl
import struct

import pytest

from nfguard.wire.errors import WireError
from nfguard.wire.tls import (
    MAX_HELLO,
    ClientHelloReader,
    HelloResult,
    parse_client_hello,
    validate_hostname,
)


def real_hello(server_hostname: str | None = "www.example.com", alpn: list[str] | None = None):
    """The first flight of a real TLS client (one record holding the ClientHello)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    return outgoing.read()


# --- re-encoding helpers (independent of the code under test) -----------------------------


def handshake_of(record_stream: bytes) -> bytes:
    """Concatenate the fragments of the handshake records in a record stream."""
    out, pos = b"", 0
    while pos < len(record_stream):
        ctype, _ver, length = struct.unpack_from("!BHH", record_stream, pos)
        assert ctype == 22
        out += record_stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def split_body(body: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """ClientHello body -> (everything before the extensions, [(type, data)])."""
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 1 + body[pos]
    prefix = body[:pos]
    (total,) = struct.unpack_from("!H", body, pos)
    pos += 2
    exts = []
    end = pos + total
    while pos < end:
        etype, elen = struct.unpack_from("!HH", body, pos)
        exts.append((etype, body[pos + 4 : pos + 4 + elen]))
        pos += 4 + elen
    assert pos == len(body)
    return prefix, exts


def join_body(prefix: bytes, exts: list[tuple[int, bytes]]) -> bytes:
    blob = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts)
    return prefix + struct.pack("!H", len(blob)) + blob


def handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(hs: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """Frame handshake bytes into TLS records of the given fragment sizes (cycled)."""
    out, pos, i = b"", 0, 0
    sizes = sizes or [len(hs)]
    while pos < len(hs):
        size = sizes[i % len(sizes)]
        frag = hs[pos : pos + size]
        out += struct.pack("!BHH", 22, version, len(frag)) + frag
        pos += size
        i += 1
    return out


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for n in names)
    return struct.pack("!H", len(entries)) + entries


def with_exts(body: bytes, change: dict[int, bytes | None], add: list[tuple[int, bytes]]) -> bytes:
    prefix, exts = split_body(body)
    out = []
    for t, d in exts:
        if t in change:
            if change[t] is not None:
                out.append((t, change[t]))
        else:
            out.append((t, d))
    return join_body(prefix, out + add)


def feed_all(reader: ClientHelloReader, pieces: list[bytes]) -> HelloResult:
    results = [reader.feed(p) for p in pieces]
    assert all(r is None for r in results[:-1]), "result before the last piece"
    assert results[-1] is not None
    return results[-1]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


HELLO = real_hello(alpn=["h2", "http/1.1"])
BODY = handshake_of(HELLO)[4:]
EXPECTED = HelloResult(sni="www.example.com", ech=False, alpn=("h2", "http/1.1"))


def pq_body() -> bytes:
    """The real hello grown to ~1.7 KB like an X25519MLKEM768 hello: a 1216-byte key share."""
    prefix, exts = split_body(BODY)
    out = []
    for t, d in exts:
        if t == 0x33:  # key_share: prepend a fake hybrid share
            shares = d[2:]
            fake = struct.pack("!HH", 0x11EC, 1216) + bytes(range(256)) * 4 + bytes(192)
            d = struct.pack("!H", len(fake) + len(shares)) + fake + shares
        out.append((t, d))
    return join_body(prefix, out)


# --- tests ----------------------------------------------------------------------------------


def test_real_hello_in_one_piece() -> None:
    assert HELLO[0] == 22
    assert ClientHelloReader().feed(HELLO) == EXPECTED
    assert parse_client_hello(BODY) == EXPECTED


def test_one_byte_pieces() -> None:
    reader = ClientHelloReader()
    assert feed_all(reader, [HELLO[i : i + 1] for i in range(len(HELLO))]) == EXPECTED
    assert reader.done and reader.feed(b"more data") == EXPECTED  # sticky result


def test_every_two_segment_split() -> None:
    for cut in range(1, len(HELLO)):
        assert feed_all(ClientHelloReader(), [HELLO[:cut], HELLO[cut:]]) == EXPECTED


def test_random_splits() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        cuts = rng.sample(range(1, len(HELLO)), rng.randint(1, 20))
        assert feed_all(ClientHelloReader(), chunks(HELLO, cuts)) == EXPECTED


@pytest.mark.parametrize("sizes", [[1], [2, 3], [7], [100], [300, 5], [4], [3]])
def test_hello_split_across_records(sizes: list[int]) -> None:
    stream = records(handshake_of(HELLO), sizes)
    assert stream.count(b"\x16\x03\x01") > 1
    assert ClientHelloReader().feed(stream) == EXPECTED
    # and the multi-record stream itself cut into TCP segments
    rng = random.Random(len(sizes) * 31 + sizes[0])
    cuts = rng.sample(range(1, len(stream)), 10)
    assert feed_all(ClientHelloReader(), chunks(stream, cuts)) == EXPECTED


def test_post_quantum_sized_hello_in_two_segments_and_records() -> None:
    body = pq_body()
    stream = records(handshake(body))
    assert 1650 < len(stream) < 1800
    assert parse_client_hello(body) == EXPECTED
    # two TCP segments as a 1460-byte MSS cuts it, and every other two-way split too
    assert feed_all(ClientHelloReader(), [stream[:1460], stream[1460:]]) == EXPECTED
    for cut in range(1, len(stream), 13):
        assert feed_all(ClientHelloReader(), [stream[:cut], stream[cut:]]) == EXPECTED
    # padding extension instead (RFC 7685)
    padded = with_exts(BODY, {0x15: None}, [(0x15, bytes(1200))])
    assert ClientHelloReader().feed(records(handshake(padded), [1000])) == EXPECTED


def test_no_sni_and_ip_literal() -> None:
    for host in (None, "192.0.2.1", "2001:db8::1"):  # Python sends no SNI for IP literals
        hello = real_hello(host)
        ext_types = [t for t, _ in split_body(handshake_of(hello)[4:])[1]]
        assert 0 not in ext_types and 0x33 in ext_types
        assert ClientHelloReader().feed(hello) == HelloResult(None, False, ())


def test_ech_and_alpn_flags() -> None:
    body = with_exts(BODY, {}, [(0xFE0D, b"\x00" * 40)])
    assert parse_client_hello(body) == HelloResult("www.example.com", True, ("h2", "http/1.1"))
    body = with_exts(BODY, {0x10: None}, [])
    assert parse_client_hello(body).alpn == ()


def test_sni_normalisation() -> None:
    body = with_exts(BODY, {0: sni_ext(b"WWW.Example.COM.")}, [])
    assert parse_client_hello(body).sni == "www.example.com"


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"a..b",
        b".",
        b"exa mple.com",
        b"ex\x00ample.com",
        b"\xc3\xa9t\xc3\xa9.fr",
        b"*.example.com",
        b"example.com:443",
        b"192.0.2.1",
        b"a" * 64 + b".com",
        (b"a" * 60 + b".") * 5,
        b"foo/bar",
    ],
)
def test_garbage_sni_is_rejected(name: bytes) -> None:
    body = with_exts(BODY, {0: sni_ext(name)}, [])
    with pytest.raises(WireError):
        parse_client_hello(body)


def test_validate_hostname_accepts_real_names() -> None:
    assert validate_hostname(b"xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert validate_hostname(b"_dmarc.Example.com") == "_dmarc.example.com"
    assert validate_hostname(b"a" * 63 + b".io") == "a" * 63 + ".io"


def test_ambiguous_hellos_are_rejected() -> None:
    prefix, exts = split_body(BODY)
    dup = join_body(prefix, [*exts, (0, sni_ext(b"evil.example"))])
    with pytest.raises(WireError, match="duplicate"):
        parse_client_hello(dup)
    two = with_exts(BODY, {0: sni_ext(b"good.example", b"evil.example")}, [])
    with pytest.raises(WireError, match="more than one"):
        parse_client_hello(two)
    # a non-host_name entry alone carries no host name
    with pytest.raises(WireError):
        parse_client_hello(with_exts(BODY, {0: sni_ext(b"x", kind=7)}, []))


def test_hello_without_extensions() -> None:
    prefix, _ = split_body(BODY)
    assert parse_client_hello(prefix) == HelloResult(None, False, ())


def test_every_truncated_body_raises() -> None:
    no_ext = len(split_body(BODY)[0])  # a hello without extensions is complete there
    for cut in range(len(BODY)):
        if cut == no_ext:
            continue
        with pytest.raises(WireError):
            parse_client_hello(BODY[:cut])
    with pytest.raises(WireError):
        parse_client_hello(BODY + b"\x00")


def test_not_tls_fails_on_the_first_bytes() -> None:
    for first in (b"G", b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00", b"\x80"):
        with pytest.raises(WireError):
            ClientHelloReader().feed(first)
    with pytest.raises(WireError):  # handshake type but no TLS version
        ClientHelloReader().feed(b"\x16\x05")


def test_wrong_record_and_message_types() -> None:
    with pytest.raises(WireError):  # alert record
        ClientHelloReader().feed(b"\x15\x03\x03\x00\x02\x02\x28")
    server_hello = b"\x02" + HELLO[6:]
    with pytest.raises(WireError, match="not a ClientHello"):
        ClientHelloReader().feed(HELLO[:5] + server_hello)
    with pytest.raises(WireError):  # first record fine, then a change_cipher_spec record
        ClientHelloReader().feed(records(handshake_of(HELLO), [10])[:15] + b"\x14\x03\x03")


def test_bounds() -> None:
    with pytest.raises(WireError):  # empty handshake record
        ClientHelloReader().feed(b"\x16\x03\x01\x00\x00")
    with pytest.raises(WireError):  # record longer than 2^14
        ClientHelloReader().feed(b"\x16\x03\x01\x40\x01")
    too_big = b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(WireError, match="16 KiB"):  # fails on the header, not after 16 KiB
        ClientHelloReader().feed(records(too_big))
    # a hello split into 1-byte records costs 6 bytes per byte: ~11 KB hello exceeds 64 KiB
    big = with_exts(BODY, {}, [(0x15, bytes(11000))])
    stream = records(handshake(big), [1])
    reader = ClientHelloReader()
    with pytest.raises(WireError, match="64 KiB"):
        for i in range(0, len(stream), 4096):
            reader.feed(stream[i : i + 4096])
    with pytest.raises(WireError):  # stays failed
        reader.feed(HELLO)


def test_data_after_the_hello_in_the_same_segment() -> None:
    early = b"\x17\x03\x03\x40\x00" + bytes(16384)
    assert ClientHelloReader().feed(HELLO + early * 5) == EXPECTED  # > 64 KiB in one piece
    reader = ClientHelloReader()
    assert reader.feed(HELLO[:100]) is None
    assert reader.feed(HELLO[100:] + early * 5) == EXPECTED


def test_small_hello_in_one_byte_records_is_fine() -> None:
    stream = records(handshake_of(HELLO), [1])
    assert len(stream) == 6 * (len(HELLO) - 5)
    assert ClientHelloReader().feed(stream) == EXPECTED
