"""HTTP/2 with prior knowledge (h2c, RFC 9113 3.3): the authority of the first request.

The client sends the connection preface, a SETTINGS frame, then any of the frames a
server takes before a request (SETTINGS, WINDOW_UPDATE, PING, PRIORITY, and extension
types, which servers must ignore), then the HEADERS (+ CONTINUATION) of its first stream,
whose HPACK block carries ``:authority`` and/or ``host``.  Everything a server treats as
a connection error before that point is an error here, and so is every request whose
authority a server could read differently: ``:authority`` and ``host`` that disagree,
two ``host`` fields, a pseudo-header twice or after a regular field, upper-case names,
CR/LF/NUL in a value (RFC 9113 8.2.1).

Bounds: the preface and frames up to the end of the first header block within 16 KiB
(the HTTP/1 head's bound), frames no larger than 16 KiB (SETTINGS_MAX_FRAME_SIZE's
initial value), the decoded header list within 64 KiB (nfguard.wire.hpack).
"""

from __future__ import annotations

import re
from enum import IntEnum

from nfguard.wire.errors import WireError
from nfguard.wire.hpack import decode_block
from nfguard.wire.request import TOKEN, RequestHead, parse_host

__all__ = ["MAX_BYTES", "PREFACE", "H2HeadReader"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BYTES = 16 * 1024
MAX_FRAME = 1 << 14
FRAME_HEADER = 9


class Frame(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


# Frames that a server refuses before the client's first HEADERS: connection errors
# (frames on an idle stream, a CONTINUATION without HEADERS, a client's PUSH_PROMISE), or
# a GOAWAY after which no request will be processed.
_REFUSED = frozenset({Frame.DATA, Frame.RST_STREAM, Frame.PUSH_PROMISE, Frame.GOAWAY,
                      Frame.CONTINUATION})
# (stream zero?, payload length) that each frame a server takes before a request must have
_SHAPE = {Frame.WINDOW_UPDATE: (True, 4), Frame.PING: (True, 8), Frame.PRIORITY: (False, 5)}

FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

_NAME = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+\Z")  # a token, lower case (8.2.1)
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


class H2HeadReader:
    """Sans-IO reader of an h2c connection's first request head, preface included.

    ``feed()`` returns None while more bytes are needed, then the ``RequestHead`` of the
    first client stream; raises ``WireError`` as the module says.  Not sticky by itself:
    ``nfguard.wire.http.RequestHeadReader`` wraps it.
    """

    __slots__ = ("_block", "_buf", "_pos", "_settings", "_stream")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # first byte not yet read as a frame
        self._settings = False  # the preface's SETTINGS frame has been read
        self._block: bytearray | None = None  # header block being gathered
        self._stream = 0

    def feed(self, data: bytes) -> RequestHead | None:
        buf = self._buf
        over = len(buf) + len(data) > MAX_BYTES
        buf += data[: MAX_BYTES - len(buf)]  # the block may still end inside the window
        result = self._frames()
        if result is None and over:
            raise WireError("h2: no complete request header block within 16 KiB")
        return result

    def _frames(self) -> RequestHead | None:
        buf = self._buf
        if not self._pos:
            if not PREFACE.startswith(bytes(buf[: len(PREFACE)])):
                raise WireError("h2: not the HTTP/2 connection preface")
            if len(buf) < len(PREFACE):
                return None
            self._pos = len(PREFACE)
        while len(buf) - self._pos >= FRAME_HEADER:
            pos = self._pos
            length = int.from_bytes(buf[pos : pos + 3], "big")
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if length > MAX_FRAME:
                raise WireError("h2: frame larger than 16 KiB")
            end = pos + FRAME_HEADER + length
            if end > len(buf):
                return None
            self._pos = end
            result = self._frame(kind, flags, stream, bytes(buf[pos + FRAME_HEADER : end]))
            if result is not None:
                return result
        return None

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> RequestHead | None:
        if self._block is not None:  # 6.10: nothing may come between a block's frames
            if kind != Frame.CONTINUATION or stream != self._stream:
                raise WireError("h2: another frame inside a header block")
            self._block += payload
            return self._block_end(flags)
        if not self._settings:
            if kind != Frame.SETTINGS or flags & FLAG_ACK:
                raise WireError("h2: the preface is not followed by SETTINGS")
            self._settings = True
        if kind == Frame.SETTINGS:
            bad_length = len(payload) if flags & FLAG_ACK else len(payload) % 6
            if stream or bad_length:
                raise WireError("h2: malformed SETTINGS frame")
        elif kind in _SHAPE:
            stream_zero, size = _SHAPE[Frame(kind)]
            if (stream == 0) != stream_zero or len(payload) != size:
                raise WireError(f"h2: malformed {Frame(kind).name} frame")
            if kind == Frame.WINDOW_UPDATE and not int.from_bytes(payload, "big") & 0x7FFFFFFF:
                raise WireError("h2: WINDOW_UPDATE of zero")
            if kind == Frame.PRIORITY and _depends_on_itself(payload, stream):
                raise WireError("h2: stream depends on itself")
        elif kind == Frame.HEADERS:
            return self._headers(flags, stream, payload)
        elif kind in _REFUSED:
            raise WireError(f"h2: {Frame(kind).name} frame before the first request")
        return None  # an extension frame type: ignored, as servers must (5.5)

    def _headers(self, flags: int, stream: int, payload: bytes) -> RequestHead | None:
        if not stream % 2:
            raise WireError("h2: HEADERS on a stream the client cannot open")
        start, pad = 0, 0
        if flags & FLAG_PADDED:
            if not payload:
                raise WireError("h2: padded HEADERS without a pad length")
            start, pad = 1, payload[0]
        if flags & FLAG_PRIORITY:
            if len(payload) < start + 5 or _depends_on_itself(payload[start:], stream):
                raise WireError("h2: bad HEADERS priority")
            start += 5
        if pad > len(payload) - start:
            raise WireError("h2: HEADERS padding longer than the frame")
        self._stream = stream
        self._block = bytearray(payload[start : len(payload) - pad])
        return self._block_end(flags)

    def _block_end(self, flags: int) -> RequestHead | None:
        if not flags & FLAG_END_HEADERS or self._block is None:
            return None
        return request_head(decode_block(bytes(self._block)))


def _depends_on_itself(priority: bytes, stream: int) -> bool:
    return int.from_bytes(priority[:4], "big") & 0x7FFFFFFF == stream


def request_head(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    """The request a decoded HTTP/2 header list makes (RFC 9113 8.3), or WireError."""
    pseudo: dict[bytes, bytes] = {}
    hosts: list[bytes] = []
    regular = False
    for name, value in fields:
        if not _NAME.match(name):
            raise WireError("h2: bad field name")
        if _BAD_VALUE.search(value):
            raise WireError("h2: CR, LF or NUL in a field value")
        if name.startswith(b":"):
            if regular or name not in _PSEUDO or name in pseudo:
                raise WireError("h2: misplaced, unknown or repeated pseudo-header")
            pseudo[name] = value
        else:
            regular = True
            if name == b"host":
                hosts.append(value)
    method = pseudo.get(b":method", b"")
    if not TOKEN.match(method):
        raise WireError("h2: bad or missing :method")
    if len(hosts) > 1:
        raise WireError("h2: several host fields")
    authority = pseudo.get(b":authority")
    host = _authority(authority) if authority is not None else None
    if hosts:
        from_host = _authority(hosts[0])
        if authority is not None and from_host != host:
            raise WireError("h2: host and :authority differ")
        host = from_host
    if method == b"CONNECT":
        if authority is None:
            raise WireError("h2: CONNECT without :authority")
        target = authority
    else:
        target = pseudo.get(b":path", b"")
        if not target or b":scheme" not in pseudo:
            raise WireError("h2: request without :path or :scheme")
    return RequestHead(method.decode("ascii"), target.decode("latin-1"), host)


def _authority(value: bytes) -> str:
    host = parse_host(value.decode("latin-1"))
    if host is None:
        raise WireError("h2: empty authority")
    return host
