"""HTTP/1.x request head parsing (RFC 9112) to learn the host a plain-HTTP flow asks for.

The policy decides on the host the *server* will act on, so every construct that servers,
proxies and this parser might read differently (request smuggling, domain-fronting tricks)
is an error rather than a guess: conflicting duplicate Host fields, whitespace before a
field colon, obsolete line folding, bare CR, control bytes, userinfo in an absolute URI.

The target of an absolute-form request (``GET http://name:port/ HTTP/1.1``, as sent to a
proxy) takes precedence over Host (RFC 9112 3.2.2); so does the authority of a CONNECT
request (3.2.3), which is where a proxy will connect.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nfguard.wire.errors import WireError
from nfguard.wire.reader import StickyReader

__all__ = ["MAX_HEAD", "RequestHead", "RequestHeadReader", "parse_host"]

MAX_HEAD = 16 * 1024
MAX_METHOD = 32  # longest registered method is 17 characters

_TCHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # RFC 9110 tchar
_TOKEN = re.compile(_TCHARS + rb"+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")  # visible ASCII, no spaces or controls
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
# Stricter than RFC 3986 reg-name on purpose: only host-name bytes (LDH and "_"), so that
# sub-delims or percent-escapes can never make a value look like a policy name to us and
# like something else to the server.
_HOST = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\Z")
_PORT = re.compile(r"[0-9]{0,5}\Z")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The request line and the effective host (None when the request names none)."""

    method: str
    target: str
    host: str | None


def parse_host(value: str) -> str | None:
    """Normalise a ``uri-host [":" port]`` authority to a lower-case host without port.

    IPv6 literals lose their brackets and take their canonical text; a trailing dot is
    dropped; an empty value gives None (RFC 9110 7.2 allows an empty Host).  Anything that
    is not a valid authority raises ``WireError``.
    """
    if not value:
        return None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise WireError("http: unterminated IPv6 literal")
        rest = value[close + 1 :]
        if rest and not (rest.startswith(":") and _PORT.match(rest[1:])):
            raise WireError("http: bad port after IPv6 literal")
        try:
            return str(ipaddress.IPv6Address(value[1:close]))
        except ValueError:
            raise WireError("http: bad IPv6 literal") from None
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not _PORT.match(port):
        raise WireError("http: bad port")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253 or not _HOST.match(host):
        raise WireError("http: bad host")
    return host


class RequestHeadReader(StickyReader[RequestHead]):
    """Sans-IO reader of one request head from client-to-server TCP payload.

    ``feed()`` returns None until the empty line ending the head has arrived, then the
    ``RequestHead`` (again on any later call).  A non-HTTP first byte fails at once; a head
    larger than 16 KiB fails; after an error the reader stays failed.  Lines may end in
    CRLF or bare LF (RFC 9112 2.2 lets recipients accept both).
    """

    __slots__ = ("_buf", "_scan")

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._scan = 0  # offset from which the end-of-head search resumes

    def _discard(self) -> None:
        self._buf.clear()

    def _feed(self, data: bytes) -> RequestHead | None:
        buf = self._buf
        over = len(buf) + len(data) > MAX_HEAD
        buf += data[:MAX_HEAD - len(buf)]  # the head may still end inside the window
        end = self._find_end(self._request_line_start())
        if end < 0:
            if over:
                raise WireError("http: request head larger than 16 KiB")
            return None
        self._result = _parse_head(bytes(buf[:end]))
        buf.clear()
        return self._result

    def _request_line_start(self) -> int:
        """Where the request line starts, after any empty lines. Rejects non-HTTP quickly:
        the first bytes must be a method token and a space."""
        start = _START.match(self._buf)
        assert start is not None  # every part of it may be empty
        if start.start(1) > 8:  # RFC 9112 2.2: ignore leading CRLFs (a few)
            raise WireError("http: too many empty lines before the request line")
        method, after = start.group(1, 2)
        if len(method) > MAX_METHOD:
            raise WireError("http: method too long")
        if after and (after != b" " or not method):
            raise WireError("http: not an HTTP request line")
        return start.start(1)

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
_START = re.compile(rb"[\r\n]*(" + _TCHARS + rb"*)(.?)", re.DOTALL)
_END = re.compile(rb"\n\r?\n")  # a line's end, then an empty line
# A whole head as RFC 9112 has it (lines ending in CRLF or LF; no bare CR, no control bytes,
# no obsolete folding, no whitespace before a colon), the header fields in one group.
_HEAD = re.compile(
    rb"(?:\r?\n)*"
    rb"(" + _TCHARS + rb"{1,%d}) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])\r?\n" % MAX_METHOD
    + rb"((?:" + _TCHARS + rb"+:[\t\x20-\x7e\x80-\xff]*\r?\n)*)"
    rb"\r?\n")
_HOST_FIELD = re.compile(rb"^host:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _parse_head(head: bytes) -> RequestHead:
    parsed = _HEAD.fullmatch(head)
    if parsed is None:
        raise WireError(_fault(head))
    method, target, _version, fields = parsed.groups()
    host_values = [value.decode("latin-1") for value in _HOST_FIELD.findall(fields)]
    if len({value.lower() for value in host_values}) > 1:
        raise WireError("http: several Host fields with different values")
    host = parse_host(host_values[0]) if host_values else None

    method_s = method.decode("ascii")
    target_s = target.decode("ascii")
    m = _ABSOLUTE.match(target)
    if m is not None:
        authority = m.group(2).decode("ascii")
        if "@" in authority:
            raise WireError("http: userinfo in the request target")
        host = parse_host(authority)
        if host is None:
            raise WireError("http: absolute-form target without a host")
    elif method_s == "CONNECT":
        if "@" in target_s or "/" in target_s:
            raise WireError("http: CONNECT target is not authority-form")
        host = parse_host(target_s)
    return RequestHead(method=method_s, target=target_s, host=host)


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
    if len(method) > MAX_METHOD or not _TOKEN.match(method):
        return "http: bad method"
    if not _TARGET.match(target):
        return "http: bad request target"
    if not _VERSION.match(version):
        return "http: bad HTTP version"
    for line in lines[1:]:
        if not line:
            return "http: empty line inside the head"
        if line[0] in b" \t":
            return "http: obsolete line folding"
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return "http: bad header field name (or whitespace before colon)"
        if not _FIELD_VALUE.match(value):
            return "http: control byte in a header field value"
    return "http: malformed request head"
