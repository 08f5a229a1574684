"""h2c with prior knowledge: the first request's authority, from curl's real bytes and from
frames written out here."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess

import pytest

from nfguard.wire.errors import WireError
from nfguard.wire.h2 import MAX_BYTES, PREFACE, H2HeadReader
from nfguard.wire.http import RequestHead, RequestHeadReader
from tests.unit.wire.test_hpack import integer


def block(*fields: tuple[bytes, bytes]) -> bytes:
    """Literal fields without indexing, new names, no Huffman."""
    return b"".join(b"\x00" + integer(len(n), 7) + n + integer(len(v), 7) + v
                    for n, v in fields)


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack("!I", stream) \
        + payload


SETTINGS = frame(4, 0, 0, struct.pack("!HI", 3, 100) + struct.pack("!HI", 4, 1 << 20))
GET = (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x")
AUTH = (b":authority", b"A.Example:8080")


def headers(*fields: tuple[bytes, bytes], stream: int = 1, flags: int = 0x5) -> bytes:
    return frame(1, flags, stream, block(*fields))


def read(data: bytes) -> RequestHead | None:
    return RequestHeadReader().feed(data)


def conn(*frames: bytes) -> bytes:
    return PREFACE + SETTINGS + b"".join(frames)


EXPECTED = RequestHead("GET", "/x", "a.example")

# --- curl's own bytes -----------------------------------------------------------------------


def curl_h2c(url_host: str) -> bytes:
    """What `curl --http2-prior-knowledge` sends to a listener on loopback before any answer."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        proc = subprocess.Popen(
            ["curl", "-s", "--max-time", "3", "--http2-prior-knowledge",
             "-H", "X-All: " + "".join(map(chr, range(0x21, 0x7F))),
             "--connect-to", f"{url_host}:{port}:127.0.0.1:{port}",
             f"http://{url_host}:{port}/a?b=1"])
        conn_, _ = srv.accept()
        conn_.settimeout(1.5)
        data = b""
        reader = RequestHeadReader()
        with conn_:
            while reader.feed(b"") is None:
                chunk = conn_.recv(65536)
                if not chunk:
                    break
                data += chunk
                reader.feed(chunk)
        proc.kill()
        proc.wait()
    return data


def test_curl_prior_knowledge() -> None:
    data = curl_h2c("WWW.Example.COM")
    assert data.startswith(PREFACE)
    want = RequestHead("GET", "/a?b=1", "www.example.com")
    assert read(data) == want
    for cut in range(1, len(data)):  # every two-segment split, the preface's included
        reader = RequestHeadReader()
        assert reader.feed(data[:cut]) is None
        assert reader.feed(data[cut:]) == want
    reader = RequestHeadReader()
    assert [reader.feed(data[i : i + 1]) for i in range(len(data))][-1] == want


# --- frames a server takes before the request -----------------------------------------------


def test_frames_before_the_headers_padding_priority_continuation() -> None:
    before = [
        frame(4, 1, 0, b""),  # SETTINGS ack
        frame(8, 0, 0, struct.pack("!I", 1 << 20)),  # WINDOW_UPDATE
        frame(2, 0, 3, struct.pack("!IB", 0, 200)),  # PRIORITY of an idle stream
        frame(6, 0, 0, bytes(8)),  # PING
        frame(0x10, 0, 0, b"\x00\x00\x00\x01u=1"),  # PRIORITY_UPDATE: an extension
        frame(0xFA, 0xFF, 7, b"anything"),  # unknown type: ignored
    ]
    fields = block(*GET, AUTH)
    padded = frame(1, 0x4 | 0x8 | 0x20, 1,
                   b"\x05" + struct.pack("!IB", 0, 15) + fields + bytes(5))
    assert read(conn(*before, padded)) == EXPECTED
    split = [frame(1, 0x1, 1, fields[:3]), frame(9, 0, 1, fields[3:9]),
             frame(9, 0x4, 1, fields[9:])]
    assert read(conn(*split)) == EXPECTED
    assert read(conn(headers(*GET, AUTH, stream=5))) == EXPECTED


@pytest.mark.parametrize(
    ("fields", "host"),
    [
        ((*GET, AUTH), "a.example"),
        ((*GET, (b"host", b"a.example")), "a.example"),
        ((*GET, AUTH, (b"host", b"A.EXAMPLE")), "a.example"),
        ((*GET, (b":authority", b"[2001:DB8::1]:80")), "2001:db8::1"),
        (GET, None),  # no authority at all: no name
    ],
)
def test_where_the_authority_comes_from(fields: tuple, host: str | None) -> None:
    r = read(conn(headers(*fields)))
    assert r is not None and r.host == host


def test_connect() -> None:
    r = read(conn(headers((b":method", b"CONNECT"), (b":authority", b"a.example:443"))))
    assert r == RequestHead("CONNECT", "a.example:443", "a.example")


@pytest.mark.parametrize(
    "fields",
    [
        (*GET, AUTH, (b"host", b"evil.example")),  # host and :authority differ
        (*GET, (b"host", b"a.example"), (b"host", b"evil.example")),
        (*GET, (b"host", b"a.example"), (b"host", b"a.example")),
        (*GET, AUTH, AUTH),  # a pseudo-header twice
        (*GET, (b"x", b"y"), AUTH),  # a pseudo-header after a regular field
        (*GET, (b":Authority", b"evil.example")),  # upper case
        (*GET, (b"Host", b"evil.example")),
        (*GET, (b":host", b"evil.example")),  # no such pseudo-header
        (*GET, (b":authority", b"user@evil.example")),  # userinfo
        (*GET, (b":authority", b"")),
        (*GET, (b":authority", b"a.example\r\nhost: evil.example")),
        (*GET, AUTH, (b"x", b"a\x00b")),
        ((b":scheme", b"http"), (b":path", b"/"), AUTH),  # no :method
        ((b":method", b"GET"), AUTH),  # no :path, no :scheme
        ((b":method", b"G T"), (b":scheme", b"http"), (b":path", b"/"), AUTH),
        ((b":method", b"CONNECT"), (b"host", b"a.example:443")),  # CONNECT, no :authority
    ],
)
def test_requests_servers_could_read_otherwise(fields: tuple) -> None:
    with pytest.raises(WireError):
        read(conn(headers(*fields)))


@pytest.mark.parametrize(
    "stream",
    [
        PREFACE + headers(*GET, AUTH),  # no SETTINGS first
        PREFACE + frame(4, 1, 0, b"") + SETTINGS + headers(*GET, AUTH),  # an ack first
        conn(frame(0, 0, 1, b"data"), headers(*GET, AUTH)),  # DATA on an idle stream
        conn(frame(3, 0, 1, bytes(4)), headers(*GET, AUTH)),  # RST_STREAM
        conn(frame(7, 0, 0, bytes(8)), headers(*GET, AUTH)),  # GOAWAY
        conn(frame(5, 0, 1, bytes(4)), headers(*GET, AUTH)),  # PUSH_PROMISE from a client
        conn(frame(9, 4, 1, block(*GET, AUTH))),  # CONTINUATION without HEADERS
        conn(frame(4, 0, 1, b"")),  # SETTINGS on a stream
        conn(frame(4, 0, 0, bytes(5))),  # SETTINGS not a multiple of 6
        conn(frame(8, 0, 1, struct.pack("!I", 1))),  # WINDOW_UPDATE on an idle stream
        conn(frame(8, 0, 0, bytes(4))),  # WINDOW_UPDATE of 0
        conn(frame(2, 0, 3, struct.pack("!IB", 3, 0))),  # PRIORITY on itself
        conn(frame(6, 0, 0, bytes(7))),  # short PING
        conn(headers(*GET, AUTH, stream=0)),
        conn(headers(*GET, AUTH, stream=2)),  # a server's stream
        conn(frame(1, 0, 1, block(*GET)), frame(6, 0, 0, bytes(8)),  # PING inside a block
             frame(9, 4, 1, block(AUTH))),
        conn(frame(1, 0, 1, block(*GET)), frame(9, 4, 3, block(AUTH))),  # another stream
        conn(frame(1, 0x5 | 0x8, 1, b"\xff" + block(*GET, AUTH))),  # padding past the frame
        conn(frame(1, 0x5 | 0x20, 1, struct.pack("!IB", 1, 0) + block(*GET, AUTH))),
        conn(frame(1, 0x5 | 0x8, 1, b"")),
        conn(frame(0xFA, 0, 0, bytes(16385))),  # larger than SETTINGS_MAX_FRAME_SIZE
        PREFACE[:-1] + b"X" + SETTINGS,
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # not the preface, not an HTTP/1 request
    ],
)
def test_connection_errors(stream: bytes) -> None:
    with pytest.raises(WireError):
        read(stream)


def test_bounds() -> None:
    pings = frame(6, 0, 0, bytes(8)) * ((MAX_BYTES - len(conn())) // 17 + 1)
    reader = RequestHeadReader()
    with pytest.raises(WireError, match="16 KiB"):
        for i in range(0, len(pings), 1000):
            reader.feed(conn() if not i else b"")
            reader.feed(pings[i : i + 1000])
    # a request right at the bound, with bytes after it, is read
    fill = MAX_BYTES - len(conn(headers(*GET, AUTH))) - 9
    data = conn(frame(0xFA, 0, 0, bytes(fill)), headers(*GET, AUTH))
    assert len(data) == MAX_BYTES
    assert read(data + frame(0, 1, 1, b"body")) == EXPECTED
    with pytest.raises(WireError):
        read(conn(frame(0xFA, 0, 0, bytes(fill + 1)), headers(*GET, AUTH)))


def test_preface_prefix_waits_then_decides() -> None:
    reader = RequestHeadReader()
    assert reader.feed(PREFACE[:18]) is None  # "PRI * HTTP/2.0\r\n\r\n" could be HTTP/1 too
    assert reader.feed(PREFACE[18:]) is None
    assert reader.feed(SETTINGS + headers(*GET, AUTH)) == EXPECTED
    assert H2HeadReader().feed(PREFACE[:5]) is None
    with pytest.raises(WireError):
        H2HeadReader().feed(b"GET / HTTP/1.1\r\n")
