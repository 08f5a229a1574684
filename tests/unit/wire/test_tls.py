"""ClientHello parsing and reassembly, on hellos produced by the real `ssl` module."""

from __future__ import annotations

import datetime
import itertools
import random
import ssl
import struct
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nfguard.wire.errors import WireError
from nfguard.wire.tls import (
    MAX_EMPTY_RECORDS,
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
EMPTY = b"\x16\x03\x01\x00\x00"  # a handshake record without a fragment
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
    with pytest.raises(WireError, match="exactly one"):
        parse_client_hello(two)
    # a host_name followed by an entry of another type: Go skips it, OpenSSL fails
    entries = b"\x00\x00\x0bwww.example\x01\x00\x0cevil.example"
    body = with_exts(BODY, {0: struct.pack("!H", len(entries)) + entries}, [])
    with pytest.raises(WireError, match="exactly one"):
        parse_client_hello(body)
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
    with pytest.raises(WireError):  # record longer than 2^14
        ClientHelloReader().feed(b"\x16\x03\x01\x40\x01")
    too_big = b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(WireError, match="64 KiB"):  # fails on the header, not after 64 KiB
        ClientHelloReader().feed(records(too_big))
    with pytest.raises(WireError, match="empty"):
        ClientHelloReader().feed(EMPTY * (MAX_EMPTY_RECORDS + 1) + HELLO)


def test_hello_up_to_64_kib_in_many_records_and_segments() -> None:
    big = with_exts(BODY, {}, [(0x7777, bytes(MAX_HELLO - len(BODY) - 4))])
    assert len(big) == MAX_HELLO
    stream = records(handshake(big), [1000])
    reader = ClientHelloReader()
    results = [reader.feed(stream[i : i + 1460]) for i in range(0, len(stream), 1460)]
    assert results[-1] == EXPECTED and results[:-1] == [None] * (len(results) - 1)
    one_byte = records(handshake(big), [1])  # 6 bytes a byte: still linear
    t = time.perf_counter()
    assert ClientHelloReader().feed(one_byte) == EXPECTED
    assert time.perf_counter() - t < 1.0
    bigger = with_exts(BODY, {}, [(0x7777, bytes(MAX_HELLO - len(BODY)))])
    with pytest.raises(WireError, match="64 KiB"):
        ClientHelloReader().feed(records(handshake(bigger), [1000]))


def test_empty_records_are_skipped_as_openssl_does() -> None:
    hs = handshake_of(HELLO)
    split = records(hs[:100]) + EMPTY * 3 + records(hs[100:])
    assert ClientHelloReader().feed(EMPTY + HELLO) == EXPECTED
    assert ClientHelloReader().feed(split) == EXPECTED
    assert ClientHelloReader().feed(EMPTY * MAX_EMPTY_RECORDS + HELLO) == EXPECTED


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


# --- what a real server makes of the same bytes ---------------------------------------------


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path = tmp_path_factory.mktemp("tls") / "server.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(path)
    return ctx


def openssl_reads(ctx: ssl.SSLContext, stream: bytes) -> str | WireError | None:
    """What OpenSSL's server does with a client's first flight: the SNI its callback gets
    (None: no SNI) when it answers with a ServerHello, a WireError when it fails."""
    seen: list[str | None] = []
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name)  # type: ignore[assignment]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(stream)
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError as exc:
        return WireError(str(exc))
    assert outgoing.read()[:1] == b"\x16", "no ServerHello"
    return seen[0] if seen else None


def ours(stream: bytes) -> str | WireError | None:
    try:
        result = ClientHelloReader().feed(stream)
    except WireError as exc:
        return exc
    assert result is not None
    return result.sni


HS = handshake_of(HELLO)
BIG = handshake(with_exts(BODY, {}, [(0x7777, bytes(60000))]))


@pytest.mark.parametrize(
    ("case", "stream", "same"),
    [
        ("plain", HELLO, True),
        ("empty record first", EMPTY + HELLO, True),
        ("32 empty records", EMPTY * 32 + HELLO, True),
        ("33 empty records", EMPTY * 33 + HELLO, True),
        ("empty record inside", records(HS[:50]) + EMPTY + records(HS[50:]), True),
        ("1-byte records", records(HS, [1]), True),
        ("60 KB hello in 1000-byte records", records(BIG, [1000]), True),
        ("record version 3.0", records(HS, version=0x0300), True),
        ("record version 2.0", records(HS, version=0x0200), True),
        ("change_cipher_spec first", b"\x14\x03\x03\x00\x01\x01" + HELLO, True),
        ("alert inside", records(HS[:50]) + b"\x15\x03\x03\x00\x02\x01\x00"
         + records(HS[50:]), True),
        ("record over 2^14", b"\x16\x03\x01\x40\x01" + HS + bytes(16385 - len(HS)), True),
        ("two server_name extensions", records(handshake(join_body(
            split_body(BODY)[0], [*split_body(BODY)[1], (0, sni_ext(b"evil.example"))]))),
         True),
        ("two host_names", records(handshake(with_exts(
            BODY, {0: sni_ext(b"www.example.com", b"evil.example")}, []))), True),
        ("another name type first", records(handshake(with_exts(
            BODY, {0: sni_ext(b"x", kind=1) + b""}, []))), True),
        # OpenSSL only checks extensions it knows for repeats; we refuse every repeat
        ("repeated unknown extension", records(handshake(with_exts(
            BODY, {}, [(0x7777, b""), (0x7777, b"")]))), False),
    ],
)
def test_what_openssl_reads(server_context: ssl.SSLContext, case: str, stream: bytes,
                            same: bool) -> None:
    """Our reading of a first flight against OpenSSL's: the same name, or both fail. Where
    they differ (`same` False) we fail and OpenSSL reads the name: never the other way."""
    server, mine = openssl_reads(server_context, stream), ours(stream)
    if same:
        assert isinstance(server, WireError) == isinstance(mine, WireError), (server, mine)
        if not isinstance(server, WireError):
            assert server == mine
    else:
        assert isinstance(mine, WireError) and server == "www.example.com"
