"""HTTP/1.x request head reader."""

from __future__ import annotations

import ipaddress
import random

import pytest

from nfguard.wire.errors import WireError
from nfguard.wire.http import MAX_HEAD, RequestHead, RequestHeadReader, parse_host

CURL = (
    b"GET /index.html?q=1 HTTP/1.1\r\n"
    b"Host: WWW.Example.com:8080\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)
EXPECTED = RequestHead("GET", "/index.html?q=1", "www.example.com")


def read(data: bytes) -> RequestHead | None:
    return RequestHeadReader().feed(data)


def test_simple_request() -> None:
    assert read(CURL) == EXPECTED


def test_body_after_head_is_ignored() -> None:
    assert read(CURL + b"POSTDATA\r\n\r\n") == EXPECTED


def test_every_split_and_byte_by_byte() -> None:
    for cut in range(1, len(CURL)):
        reader = RequestHeadReader()
        assert reader.feed(CURL[:cut]) is None
        assert reader.feed(CURL[cut:]) == EXPECTED
    reader = RequestHeadReader()
    results = [reader.feed(CURL[i : i + 1]) for i in range(len(CURL))]
    assert results[:-1] == [None] * (len(CURL) - 1) and results[-1] == EXPECTED
    assert reader.done and reader.feed(b"x") == EXPECTED


def test_random_splits_with_bare_lf() -> None:
    data = CURL.replace(b"\r\n", b"\n")
    rng = random.Random(7)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        reader = RequestHeadReader()
        got = None
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            got = reader.feed(data[a:b])
        assert got == EXPECTED


def test_head_not_complete_yet() -> None:
    assert read(CURL[:-2]) is None
    assert read(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r") is None


@pytest.mark.parametrize(
    ("target", "host_header", "expected"),
    [
        (b"http://Proxy.Example:3128/x", b"other.example", "proxy.example"),
        (b"https://api.example.com", b"", "api.example.com"),
        (b"http://[2001:DB8::1]:80/", b"x.example", "2001:db8::1"),
        (b"http://192.0.2.7/", None, "192.0.2.7"),
        (b"/path", b"[::1]:8080", "::1"),
        (b"/path", b"[::1]", "::1"),
        (b"/path", b"example.org.", "example.org"),
        (b"/path", b"", None),
        (b"*", b"example.org", "example.org"),
    ],
)
def test_host_sources(target: bytes, host_header: bytes | None, expected: str | None) -> None:
    head = b"OPTIONS " + target + b" HTTP/1.1\r\n"
    if host_header is not None:
        head += b"Host: " + host_header + b"\r\n"
    r = read(head + b"\r\n")
    assert r is not None and r.host == expected and r.target == target.decode()


def test_http10_without_host_and_connect() -> None:
    assert read(b"GET / HTTP/1.0\r\n\r\n") == RequestHead("GET", "/", None)
    r = read(b"CONNECT Github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n")
    assert r == RequestHead("CONNECT", "Github.com:443", "github.com")
    r = read(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n")
    assert r is not None and r.host == "evil.example"  # where the proxy will connect


def test_leading_empty_lines_are_skipped() -> None:
    assert read(b"\r\n\r\n" + CURL) == EXPECTED
    assert read(b"\n" + CURL) == EXPECTED


def test_duplicate_host_headers() -> None:
    same = b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: A.EXAMPLE\r\n\r\n"
    assert read(same) == RequestHead("GET", "/", "a.example")
    with pytest.raises(WireError, match="Host"):
        read(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    with pytest.raises(WireError, match="Host"):  # even when absolute-form would win
        read(b"GET http://c.example/ HTTP/1.1\r\nHost: a.example\r\nHOST: b.example\r\n\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost : evil.example\r\n\r\n",  # whitespace before colon
        b"GET / HTTP/1.1\r\nX: a\r\n Host: evil.example\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: a.ex\x00ample\r\n\r\n",  # control byte
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.com;.github.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
        b"GET http://github.com@evil.example/ HTTP/1.1\r\nHost: github.com\r\n\r\n",
        b"GET http:///x HTTP/1.1\r\nHost: github.com\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTX/1.1\r\n\r\n",
        b"GET /\r\n\r\n",  # HTTP/0.9
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"CONNECT a.example/b HTTP/1.1\r\n\r\n",
        b"CONNECT u@a.example:443 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_heads(head: bytes) -> None:
    with pytest.raises(WireError):
        read(head)


def test_non_http_fails_on_the_first_bytes() -> None:
    for first in (b"\x16", b"\x16\x03\x01\x02\x00", b"\x00", b" GET", b"\xffGET"):
        with pytest.raises(WireError):
            read(first)
    with pytest.raises(WireError):  # a "method" longer than any real one
        read(b"A" * 40)
    assert read(b"GE") is None  # a prefix of a method is fine


def test_size_bound() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a.example\r\nX: " + b"a" * MAX_HEAD
    reader = RequestHeadReader()
    with pytest.raises(WireError, match="16 KiB"):
        for i in range(0, len(big), 1000):
            reader.feed(big[i : i + 1000])
    with pytest.raises(WireError):  # stays failed
        reader.feed(CURL)
    # a head that ends right at the bound, delivered with trailing body bytes, is fine
    head = b"GET / HTTP/1.1\r\nHost: a.example\r\nX: "
    pad = MAX_HEAD - len(head) - 4
    ok = head + b"a" * pad + b"\r\n\r\n"
    assert len(ok) == MAX_HEAD
    assert read(ok + b"body") == RequestHead("GET", "/", "a.example")
    with pytest.raises(WireError):
        read(head + b"a" * (pad + 1) + b"\r\n\r\n")


def test_parse_host() -> None:
    assert parse_host("Example.COM:443") == "example.com"
    assert parse_host("example.com:") == "example.com"
    mapped = str(ipaddress.IPv6Address("::ffff:192.0.2.1"))  # text form varies by Python
    assert parse_host("[::FFFF:192.0.2.1]:8443") == mapped
    assert parse_host("") is None
    for bad in ("exa mple", "a:b:c", "[::1]x", "[::1]:8x", "%41.example", ".", "a..b"):
        with pytest.raises(WireError):
            parse_host(bad)
