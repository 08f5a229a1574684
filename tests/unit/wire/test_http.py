"""HTTP/1.x request head reader."""

from __future__ import annotations

import ipaddress
import random

import pytest

from nfguard.wire.errors import WireError
from nfguard.wire.http import (
    MAX_HEAD,
    RequestHead,
    RequestHeadReader,
    could_start_request,
    parse_host,
)

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
        (b"http://Proxy.Example:3128/x", b"proxy.example", "proxy.example"),
        (b"HTTPS://api.example.com", b"API.example.com:443", "api.example.com"),
        (b"http://[2001:DB8::1]:80/", b"[2001:db8::1]", "2001:db8::1"),
        (b"http://192.0.2.7/", b"192.0.2.7:80", "192.0.2.7"),
        (b"/path", b"[::1]:8080", "::1"),
        (b"/path", b"[::1]", "::1"),
        (b"/path", b"example.org.", "example.org"),
        (b"/path", b"", None),
        (b"*", b"example.org", "example.org"),
    ],
)
def test_host_sources(target: bytes, host_header: bytes, expected: str | None) -> None:
    r = read(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: " + host_header + b"\r\n\r\n")
    assert r is not None and r.host == expected and r.target == target.decode()


@pytest.mark.parametrize(
    ("target", "host_header"),
    [
        (b"http://evil.example/", b"allowed.example"),  # servers use the target's
        (b"http://evil.example/", b""),
        (b"http://evil.example/", None),  # HTTP/1.1 without Host: a 400
        (b"ftp://evil.example/", b"evil.example"),  # not an HTTP URI: not absolute-form
        (b"http:evil.example", b"evil.example"),
        (b"evil.example", b"evil.example"),  # authority-form without CONNECT
        (b"*", b"evil.example"),  # asterisk-form with GET
    ],
)
def test_targets_servers_could_read_otherwise(target: bytes, host_header: bytes | None) -> None:
    head = b"GET " + target + b" HTTP/1.1\r\n"
    if host_header is not None:
        head += b"Host: " + host_header + b"\r\n"
    with pytest.raises(WireError):
        read(head + b"\r\n")


def test_http10_without_host_and_connect() -> None:
    assert read(b"GET / HTTP/1.0\r\n\r\n") == RequestHead("GET", "/", None)
    assert read(b"GET http://a.example/ HTTP/1.0\r\n\r\n") == RequestHead(
        "GET", "http://a.example/", "a.example")
    r = read(b"CONNECT Github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n")
    assert r == RequestHead("CONNECT", "Github.com:443", "github.com")
    for head in (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n",
                 b"CONNECT evil.example HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                 b"CONNECT / HTTP/1.1\r\nHost: evil.example\r\n\r\n"):
        with pytest.raises(WireError):
            read(head)


@pytest.mark.parametrize("method", [b"PROPFIND", b"M-SEARCH", b"X", b"BREW", b"get", b"A!#$%"])
def test_any_token_method(method: bytes) -> None:
    r = read(method + b" / HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert r == RequestHead(method.decode(), "/", "a.example")
    assert could_start_request(method + b" ") and could_start_request(method)


def test_leading_empty_lines_are_skipped() -> None:
    assert read(b"\r\n\r\n" + CURL) == EXPECTED
    assert read(b"\n" + CURL) == EXPECTED
    assert read(b"\r\n" * 10 + CURL) == EXPECTED
    reader = RequestHeadReader()
    assert all(reader.feed(b"\r\n"[i % 2 : i % 2 + 1]) is None for i in range(20))
    assert reader.feed(CURL) == EXPECTED
    with pytest.raises(WireError):  # more than Apache takes
        read(b"\r\n" * 11 + CURL)
    with pytest.raises(WireError):  # a bare CR is no line end
        read(b"\r\r\n" + CURL)


def test_duplicate_host_headers() -> None:
    for head in (b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: A.EXAMPLE\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
                 b"GET http://c.example/ HTTP/1.1\r\nHost: c.example\r\nHOST: b.example\r\n\r\n",
                 b"GET / HTTP/1.0\r\nHost: a.example\r\nHost: a.example\r\n\r\n"):
        with pytest.raises(WireError, match="Host"):
            read(head)


def test_versions() -> None:
    assert read(b"GET / HTTP/1.2\r\nHost: a.example\r\n\r\n") is not None
    for version in (b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"):
        with pytest.raises(WireError, match="version"):
            read(b"GET / " + version + b"\r\nHost: a.example\r\n\r\n")
    with pytest.raises(WireError):
        read(b"GET / HTTP/1.1\r\n\r\n")  # HTTP/1.1 without Host


def test_could_start_request() -> None:
    for yes in (b"", b"G", b"GET", b"GET ", b"GET / HTTP/1.1", b"\r\n", b"\n\nPOST /",
                b"PRI * HTTP/2.0\r\n\r\nSM", b"\r\n" * 10 + b"X /"):
        assert could_start_request(yes), yes
    for no in (b" ", b"\x16\x03\x01", b"SSH-2.0-OpenSSH_9.6\r\n", b"GET\t/", b"GET/ ",
               b"\r\n" * 11, b"A" * 33, b"\x00", b"G\xc3\xa9T /"):
        assert not could_start_request(no), no


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost : evil.example\r\n\r\n",  # whitespace before colon
        b"GET / HTTP/1.1\r\nX: a\r\n Host: evil.example\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: a.ex\x00ample\r\n\r\n",  # control byte
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nX: a\x00b\r\n\r\n",
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
