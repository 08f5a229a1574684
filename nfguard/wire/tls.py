"""TLS ClientHello parsing (RFC 8446 4.1.2, RFC 6066 3, RFC 7301) and reassembly.

A ClientHello can span several TCP segments (post-quantum key shares make it ~1.7 KB) and
several TLS records (record splitting is a known DPI-evasion trick), so the reader
reassembles the handshake message across both before parsing, the way a server's record
layer does (OpenSSL 3 was asked, see tests/unit/wire/test_tls.py): records of 0 to 2^14
bytes, up to 32 empty ones (more and OpenSSL fails the handshake), any 3.x record
version, no record of another type before the hello ends.  The hello itself is bounded
at 64 KiB (OpenSSL takes up to 128 KiB: a larger one is "cannot be known", not a guess).

Only what the policy needs is extracted: the SNI host name, whether an ECH extension is
present, and the ALPN protocols.  Ambiguities a server might resolve differently from us
(a repeated extension, a server_name list that is not exactly one host_name) are errors,
not guesses.
"""

from __future__ import annotations

import functools
import re
import struct
from typing import NamedTuple

from nfguard.wire.errors import WireError
from nfguard.wire.reader import StickyReader

__all__ = [
    "MAX_HELLO",
    "ClientHelloReader",
    "HelloResult",
    "hello_in",
    "parse_client_hello",
    "validate_hostname",
]

MAX_HELLO = 64 * 1024  # ClientHello body bound; real ones are 0.2-2 KB
MAX_RECORD = 1 << 14  # RFC 8446 5.1: TLSPlaintext.length <= 2^14
MAX_EMPTY_RECORDS = 32  # OpenSSL's MAX_EMPTY_RECORDS: the 33rd fails its handshake

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_ECH = 0xFE0D

_U16 = struct.Struct("!H")
_EXT = struct.Struct("!HH")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")


class HelloResult(NamedTuple):
    """What a ClientHello says about its destination (a NamedTuple: one is built for every
    TLS flow, and a tuple costs a fraction of a frozen dataclass).

    ``sni`` is the host name the client asked for (None when absent); ``ech`` tells that an
    encrypted_client_hello extension is present, in which case ``sni`` is only the outer
    public name.  GREASE ECH is common, so ``ech`` is informational only.
    """

    sni: str | None
    ech: bool
    alpn: tuple[str, ...]


@functools.lru_cache(maxsize=1024)  # clients name the same few hosts over and over
def validate_hostname(raw: bytes) -> str:
    """Return ``raw`` as a lower-case host name without trailing dot, or raise WireError.

    Accepts LDH labels (plus "_", seen in the wild); rejects empty labels, non-ASCII,
    spaces, wildcards, ports, and IP literals (RFC 6066 forbids them in SNI; a last label
    made only of digits is never a real top-level domain).
    """
    if not raw or len(raw) > 254:
        raise WireError("tls: bad host name length")
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        raise WireError("tls: non-ASCII host name") from None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise WireError("tls: bad host name length")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise WireError("tls: host name is not LDH")
    if labels[-1].isdigit():
        raise WireError("tls: IP literal or numeric TLD in host name")
    return name


def _vec(body: bytes, pos: int, end: int, width: int) -> tuple[int, int]:
    """Read a length-prefixed vector header; return (start, stop) of its content."""
    if pos + width > end:
        raise WireError("tls: truncated vector length")
    length = body[pos] if width == 1 else _U16.unpack_from(body, pos)[0]
    start = pos + width
    if start + length > end:
        raise WireError("tls: vector runs past its container")
    return start, start + length


def _parse_sni(body: bytes, pos: int, end: int) -> str:
    """The one host name of a server_name extension.

    Only a list of exactly one host_name entry is read: OpenSSL rejects anything else,
    while other servers skip unknown name types or take the first host name, so every
    other shape could name different hosts to different servers.
    """
    start, stop = _vec(body, pos, end, 2)
    if stop != end or start == stop:
        raise WireError("tls: bad server_name extension")
    if body[start] != 0:
        raise WireError("tls: server_name entry is not a host_name")
    nstart, nstop = _vec(body, start + 1, stop, 2)
    if nstop != stop:
        raise WireError("tls: server_name list is not exactly one host_name")
    return validate_hostname(body[nstart:nstop])


def _parse_alpn(body: bytes, pos: int, end: int) -> tuple[str, ...]:
    start, stop = _vec(body, pos, end, 2)
    if stop != end or start == stop:
        raise WireError("tls: bad ALPN extension")
    out: list[str] = []
    while start < stop:
        pstart, pstop = _vec(body, start, stop, 1)
        if pstart == pstop:
            raise WireError("tls: empty ALPN protocol name")
        out.append(body[pstart:pstop].decode("ascii", "backslashreplace"))
        start = pstop
    return tuple(out)


def parse_client_hello(handshake_body: bytes) -> HelloResult:
    """Parse a ClientHello body (after the 4-byte handshake header); bounded, linear.

    Used by ``ClientHelloReader`` (TLS over TCP) and by the QUIC assembler (CRYPTO frames).
    """
    body = bytes(handshake_body)
    end = len(body)
    if end > MAX_HELLO:
        raise WireError("tls: ClientHello too large")
    if end < 2 + 32 + 1 + 2 + 1:
        raise WireError("tls: ClientHello too short")
    if body[0] != 3:
        raise WireError("tls: ClientHello legacy_version is not 3.x")
    pos = 2 + 32
    sid_start, pos = _vec(body, pos, end, 1)  # legacy_session_id
    if pos - sid_start > 32:
        raise WireError("tls: session id longer than 32 bytes")
    cs_start, pos = _vec(body, pos, end, 2)  # cipher_suites
    if (pos - cs_start) % 2 or pos == cs_start:
        raise WireError("tls: bad cipher_suites")
    cm_start, pos = _vec(body, pos, end, 1)  # legacy_compression_methods
    if pos == cm_start:
        raise WireError("tls: no compression methods")

    sni: str | None = None
    ech = False
    alpn: tuple[str, ...] = ()
    if pos == end:  # TLS 1.2 allows a hello without extensions
        return HelloResult(sni=None, ech=False, alpn=())
    ext_pos, ext_end = _vec(body, pos, end, 2)
    if ext_end != end:
        raise WireError("tls: bytes after the extensions")
    seen: set[int] = set()
    while ext_pos < ext_end:
        if ext_pos + 4 > ext_end:
            raise WireError("tls: truncated extension header")
        etype, elen = _EXT.unpack_from(body, ext_pos)
        dstart = ext_pos + 4
        dend = dstart + elen
        if dend > ext_end:
            raise WireError("tls: extension runs past the extensions block")
        if etype in seen:
            raise WireError(f"tls: duplicate extension {etype:#06x}")
        seen.add(etype)
        if etype == EXT_SERVER_NAME:
            sni = _parse_sni(body, dstart, dend)
        elif etype == EXT_ALPN:
            alpn = _parse_alpn(body, dstart, dend)
        elif etype == EXT_ECH:
            ech = True
        ext_pos = dend
    return HelloResult(sni=sni, ech=ech, alpn=alpn)


def hello_in(data: bytes) -> HelloResult | None:
    """The ClientHello when a stream's first bytes open with one handshake record that
    holds it whole (the common case: one parse, no reassembly), as a ``ClientHelloReader``
    fed `data` would read it; None when that reader must read the stream (a hello over
    several records or segments, bytes it rejects). Raises ``WireError`` as the reader
    would for a hello it rejects."""
    if len(data) < 9 or data[0] != CONTENT_HANDSHAKE or data[1] != 3:
        return None
    (length,) = _U16.unpack_from(data, 3)
    if length > MAX_RECORD or len(data) < 5 + length or data[5] != HANDSHAKE_CLIENT_HELLO:
        return None
    hello = int.from_bytes(data[6:9])  # <= MAX_RECORD - 4 here: within MAX_HELLO
    if 4 + hello > length:
        return None
    return parse_client_hello(data[9:9 + hello])


class ClientHelloReader(StickyReader[HelloResult]):
    """Sans-IO reassembly of a ClientHello from client-to-server TCP payload.

    ``feed()`` the payload of each segment in stream order; it returns None while more
    bytes are needed and the ``HelloResult`` once the hello is complete (again on any later
    call); bytes after the hello (early data) are not looked at.  Raises ``WireError`` at
    the first byte that cannot start a TLS handshake record, on any other record type
    before the hello is complete, on a handshake message that is not a ClientHello, and
    when a bound is exceeded; after an error the reader stays failed.  It keeps at most
    one incomplete record and the handshake bytes so far (<= 64 KiB), and its work is
    linear in the bytes fed.
    """

    __slots__ = ("_empty", "_hs", "_raw")

    def __init__(self) -> None:
        super().__init__()
        self._raw = bytearray()  # record-layer bytes not yet consumed
        self._hs = bytearray()  # handshake-layer bytes gathered from records
        self._empty = 0  # empty records seen

    def _discard(self) -> None:
        self._raw.clear()
        self._hs.clear()

    def _feed(self, data: bytes) -> HelloResult | None:
        raw = self._raw
        raw += data
        hs = self._hs
        pos = 0
        n = len(raw)
        result: HelloResult | None = None
        while result is None and pos < n:
            # Check the header bytes as soon as they arrive so non-TLS fails fast.
            if raw[pos] != CONTENT_HANDSHAKE:
                raise WireError(f"tls: record type {raw[pos]} before the ClientHello ended")
            if n - pos >= 2 and raw[pos + 1] != 3:
                raise WireError("tls: record version is not 3.x")
            if n - pos < 5:
                break
            (length,) = _U16.unpack_from(raw, pos + 3)
            if length > MAX_RECORD:
                raise WireError("tls: handshake record longer than 2^14")
            if n - pos - 5 < length:
                break
            if length == 0:
                self._empty += 1
                if self._empty > MAX_EMPTY_RECORDS:
                    raise WireError("tls: too many empty handshake records")
            hs += raw[pos + 5 : pos + 5 + length]
            pos += 5 + length
            result = self._try_hello(hs)
        if result is not None:
            self._result = result
            raw.clear()
            hs.clear()
        elif pos:
            del raw[:pos]
        return result

    @staticmethod
    def _try_hello(hs: bytearray) -> HelloResult | None:
        if not hs:
            return None
        if hs[0] != HANDSHAKE_CLIENT_HELLO:
            raise WireError("tls: first handshake message is not a ClientHello")
        if len(hs) < 4:
            return None
        length = int.from_bytes(hs[1:4], "big")
        if length > MAX_HELLO:
            raise WireError("tls: ClientHello larger than 64 KiB")
        if len(hs) < 4 + length:
            return None
        return parse_client_hello(bytes(hs[4 : 4 + length]))
