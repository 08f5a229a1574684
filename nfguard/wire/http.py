"""HTTP/1.x request head parsing (RFC 9112) to learn the host a plain-HTTP flow asks for.

The policy decides on the host the *server* will act on, so every construct that servers,
proxies and this parser might read differently (request smuggling, domain-fronting tricks)
is an error rather than a guess: a missing (HTTP/1.1) or repeated Host field, whitespace
before a field colon, obsolete line folding, bare CR, control bytes, userinfo, a version
other than 1.x, a request-target form its method does not take.

What servers accept is read: any token method, up to 10 empty lines before the request
line (Apache's limit; nginx takes any number), lines ending in CRLF or bare LF.  An
absolute-form target (``GET http://name/ HTTP/1.1``) names the host a server uses
(RFC 9112 3.2.2), and so does a CONNECT's authority-form (3.2.3); a Host field that names
another host makes the request ambiguous between proxies and origins: an error.

A connection that opens with HTTP/2's preface (h2c with prior knowledge) is read by
nfguard.wire.h2, through the same ``RequestHeadReader``.
"""

from __future__ import annotations

import re

from nfguard.wire.errors import WireError
from nfguard.wire.h2 import PREFACE, H2HeadReader
from nfguard.wire.reader import StickyReader
from nfguard.wire.request import TCHARS, TOKEN, RequestHead, parse_host

__all__ = [
    "MAX_HEAD",
    "RequestHead",
    "RequestHeadReader",
    "could_start_request",
    "head_in",
    "parse_host",
]

MAX_HEAD = 16 * 1024
MAX_METHOD = 32  # longest registered method is 17 characters
MAX_LEADING = 20  # bytes of empty lines before the request line: 10 CRLFs

_VERSION = re.compile(rb"HTTP/1\.[0-9]\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")  # visible ASCII, no spaces or controls
_ABSOLUTE = re.compile(rb"(https?)://([^/?#]*)", re.IGNORECASE)
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_head = tuple.__new__  # a RequestHead without the Python-level __new__ NamedTuple gives it


def could_start_request(data: bytes) -> bool:
    """Whether client bytes can be the start of an HTTP request (HTTP/1 or h2c): empty
    lines, then a method token and a space, or a prefix of that."""
    return _line_start(data) >= 0


def head_in(data: bytes) -> RequestHead | None:
    """The request head when a stream's first bytes hold it whole (the common case: one
    match, no buffering), as a ``RequestHeadReader`` fed `data` would read it; None when
    that reader must read the stream (a head in pieces, h2c, bytes it rejects). Raises
    ``WireError`` as the reader would for a head it rejects."""
    parsed = _HEAD.match(data, 0, MAX_HEAD)  # a head ends at its first empty line
    if parsed is None or parsed.start(1) > MAX_LEADING:  # (h2c's preface never matches)
        return None
    return _request(parsed)


def _line_start(data: bytes | bytearray) -> int:
    """Where the request line starts, after any empty lines; -1 when `data` cannot start
    a request, so that non-HTTP fails on its first bytes."""
    start = _START.match(data)
    assert start is not None  # every part of it may be empty
    method, after = start.group(1, 2)
    if start.start(1) > MAX_LEADING or len(method) > MAX_METHOD:
        return -1
    if after and (after != b" " or not method):
        return -1
    return start.start(1)


class RequestHeadReader(StickyReader[RequestHead]):
    """Sans-IO reader of one request head from client-to-server TCP payload.

    ``feed()`` returns None until the head is complete (HTTP/1: the empty line ending it;
    h2c: the end of the first header block), then the ``RequestHead`` (again on any later
    call).  A non-HTTP first byte fails at once; a head that has not ended within 16 KiB
    fails; after an error the reader stays failed.
    """

    __slots__ = ("_buf", "_h2", "_scan")

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._scan = 0  # offset from which the end-of-head search resumes
        self._h2: H2HeadReader | None = None

    def _discard(self) -> None:
        self._buf.clear()
        self._h2 = None

    def _feed(self, data: bytes) -> RequestHead | None:
        buf = self._buf
        if self._h2 is None and len(buf) < len(PREFACE):
            opening = bytes(buf[: len(PREFACE)]) + data[: len(PREFACE)]
            if PREFACE.startswith(opening[: len(PREFACE)]):
                if len(opening) < len(PREFACE):
                    buf += data  # a prefix of the preface (or of a PRI request line)
                    return None
                self._h2 = H2HeadReader()
                data = bytes(buf) + data
                buf.clear()
        if self._h2 is not None:
            self._result = self._h2.feed(data)
            return self._result
        over = len(buf) + len(data) > MAX_HEAD
        buf += data[: MAX_HEAD - len(buf)]  # the head may still end inside the window
        line_start = _line_start(buf)
        if line_start < 0:
            raise WireError("http: not the start of an HTTP request")
        end = self._find_end(line_start)
        if end < 0:
            if over:
                raise WireError("http: request head larger than 16 KiB")
            return None
        self._result = _parse_head(bytes(buf[:end]))
        buf.clear()
        return self._result

    def _find_end(self, line_start: int) -> int:
        """Offset of the first byte after the empty line ending the head, or -1. Empty
        lines before the request line (before `line_start`) do not end it."""
        buf = self._buf
        end = _END.search(buf, max(self._scan, line_start))
        if end is None:
            self._scan = max(0, len(buf) - 2)  # an end may straddle this and the next feed
            return -1
        return end.end()


# The start of a request: empty lines, a method token, and what follows it (a space).
_START = re.compile(rb"[\r\n]*(" + TCHARS + rb"*)(.?)", re.DOTALL)
_END = re.compile(rb"\n\r?\n")  # a line's end, then an empty line
# A whole head as RFC 9112 has it (lines ending in CRLF or LF; no bare CR, no control bytes,
# no obsolete folding, no whitespace before a colon), the header fields in one group.
_HEAD = re.compile(
    rb"(?:\r?\n)*"
    rb"(" + TCHARS + rb"{1,%d}) ([\x21-\x7e]+) (HTTP/1\.[0-9])\r?\n" % MAX_METHOD
    + rb"((?:" + TCHARS + rb"+:[\t\x20-\x7e\x80-\xff]*\r?\n)*)"
    rb"\r?\n")
_HOST_FIELD = b"\nhost:"  # in "\n" + the fields, lower-cased: a Host field's start
_HOST_VALUE = len(_HOST_FIELD) - 1  # from a Host field's start in the fields to its value


def _parse_head(head: bytes) -> RequestHead:
    parsed = _HEAD.fullmatch(head)
    if parsed is None:
        raise WireError(_fault(head))
    return _request(parsed)


def _host_values(fields: bytes) -> list[bytes]:
    """The values of the Host fields among header fields `_HEAD` matched (each line a
    name, a colon and a value without CR or LF), optional whitespace stripped; found with
    bytes.find, which costs a fraction of a regular expression's scan."""
    lowered = b"\n" + fields.lower()  # offsets in `lowered` are one past those in `fields`
    values = []
    at = lowered.find(_HOST_FIELD)
    while at >= 0:
        end = lowered.index(b"\n", at + 1)
        # A value's only CR is its line's last byte (`_HEAD` takes no bare CR): stripped
        # with the whitespace around the value.
        values.append(fields[at + _HOST_VALUE:end - 1].strip(b" \t\r"))
        at = lowered.find(_HOST_FIELD, end)
    return values


def _request(parsed: re.Match[bytes]) -> RequestHead:
    """What a head `_HEAD` matched asks for, or WireError for what servers could read
    otherwise."""
    method, target, version, fields = parsed.groups()
    host_values = _host_values(fields)
    if len(host_values) > 1:
        raise WireError("http: more than one Host field")  # RFC 9112 3.2: a 400
    if not host_values and version != b"HTTP/1.0":
        raise WireError("http: HTTP/1.1 request without Host")  # RFC 9112 3.2: a 400
    host = parse_host(host_values[0].decode("latin-1")) if host_values else None
    method_s, target_s = method.decode("ascii"), target.decode("ascii")
    if method != b"CONNECT" and (target[:1] == b"/"
                                 or (target == b"*" and method == b"OPTIONS")):
        return _head(RequestHead, (method_s, target_s, host))  # origin-form
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        named = parse_host(absolute.group(2).decode("ascii"))
    elif method == b"CONNECT":
        if "/" in target_s or ":" not in target_s:
            raise WireError("http: CONNECT target is not authority-form")
        named = parse_host(target_s)
    else:
        raise WireError("http: request target form does not fit the method")
    if named is None:
        raise WireError("http: request target without a host")
    if host_values and host != named:
        raise WireError("http: Host names another host than the request target")
    return _head(RequestHead, (method_s, target_s, named))


def _fault(head: bytes) -> str:
    """What is wrong with a head `_HEAD` does not match, line by line, for the error."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    if any(b"\r" in line for line in lines):
        return "http: bare CR in the request head"
    while lines and not lines[0]:
        lines.pop(0)  # leading empty lines
    while lines and not lines[-1]:
        lines.pop()  # the terminating empty line(s)
    if not lines:
        return "http: empty request head"
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return "http: request line is not 'method target version'"
    method, target, version = parts
    if len(method) > MAX_METHOD or not TOKEN.match(method):
        return "http: bad method"
    if not _TARGET.match(target):
        return "http: bad request target"
    if not _VERSION.match(version):
        return "http: not an HTTP/1.x version"
    for line in lines[1:]:
        if not line:
            return "http: empty line inside the head"
        if line[0] in b" \t":
            return "http: obsolete line folding"
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.match(name):
            return "http: bad header field name (or whitespace before colon)"
        if not _FIELD_VALUE.match(value):
            return "http: control byte in a header field value"
    return "http: malformed request head"
