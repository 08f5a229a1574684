"""HPACK (RFC 7541) decoding of one header block: enough to read a request's authority.

Only the first header block of a connection is ever decoded here, so the dynamic table
starts empty and lives for that one block (inserts within the block are seen by the
fields after them, as at the server).  What a server would refuse is an error: an index
past the tables, a size update after the first field or above the bound, a Huffman
string with the EOS symbol or bad padding (5.2), an integer that does not end.

Bounds: the decoded header list (RFC 9113's SETTINGS_MAX_HEADER_LIST_SIZE measure: name
+ value + 32 per field) stops at 64 KiB, so indexed references to one large entry cannot
multiply the work; the block itself is bounded by the caller.
"""

from __future__ import annotations

from nfguard.wire.errors import WireError

__all__ = ["MAX_LIST", "MAX_TABLE", "decode_block", "huffman_decode"]

MAX_TABLE = 64 * 1024  # largest dynamic table a size update may ask for
DEFAULT_TABLE = 4096  # SETTINGS_HEADER_TABLE_SIZE until the server says otherwise
MAX_LIST = 64 * 1024  # decoded header list bound
ENTRY_OVERHEAD = 32  # RFC 7541 4.1

# Appendix A, one entry a line: name, then the value after a space (if any).
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode())
    for name, _, value in (line.partition(" ") for line in """\
:authority
:method GET
:method POST
:path /
:path /index.html
:scheme http
:scheme https
:status 200
:status 204
:status 206
:status 304
:status 400
:status 404
:status 500
accept-charset
accept-encoding gzip, deflate
accept-language
accept-ranges
accept
access-control-allow-origin
age
allow
authorization
cache-control
content-disposition
content-encoding
content-language
content-length
content-location
content-range
content-type
cookie
date
etag
expect
expires
from
host
if-match
if-modified-since
if-none-match
if-range
if-unmodified-since
last-modified
link
location
max-forwards
proxy-authenticate
proxy-authorization
range
referer
refresh
retry-after
server
set-cookie
strict-transport-security
transfer-encoding
user-agent
vary
via
www-authenticate""".splitlines())
)

# Appendix B as code lengths per symbol 0..255 (then EOS, 256): the code is canonical
# (codes of one length are consecutive, in symbol order), so the lengths define it.
_CODE_LENGTHS = " ".join((
    "13 23 28 28 28 28 28 28 28 24 30 28 28 30 28 28",  # 0x00-0x0f
    "28 28 28 28 28 28 30 28 28 28 28 28 28 28 28 28",  # 0x10-0x1f
    "6 10 10 12 13 6 8 11 10 10 8 11 8 6 6 6",  # 0x20-0x2f
    "5 5 5 6 6 6 6 6 6 6 7 8 15 6 12 10",  # 0x30-0x3f
    "13 6 7 7 7 7 7 7 7 7 7 7 7 7 7 7",  # 0x40-0x4f
    "7 7 7 7 7 7 7 7 8 7 8 13 19 13 14 6",  # 0x50-0x5f
    "15 5 6 5 6 5 6 6 6 5 7 7 6 6 6 5",  # 0x60-0x6f
    "6 7 6 5 5 6 7 7 7 7 7 15 11 14 13 28",  # 0x70-0x7f
    "20 22 20 20 22 22 22 23 22 23 23 23 23 23 24 23",  # 0x80-0x8f
    "24 24 22 23 24 23 23 23 23 21 22 23 22 23 23 24",  # 0x90-0x9f
    "22 21 20 22 22 23 23 21 23 22 22 24 21 22 23 23",  # 0xa0-0xaf
    "21 21 22 21 23 22 23 23 20 22 22 22 23 22 22 23",  # 0xb0-0xbf
    "26 26 20 19 22 23 22 25 26 26 26 27 27 26 24 25",  # 0xc0-0xcf
    "19 21 26 27 27 26 27 24 21 21 26 26 28 27 27 27",  # 0xd0-0xdf
    "20 24 20 21 22 21 21 23 22 22 25 25 24 24 26 23",  # 0xe0-0xef
    "26 27 26 26 27 27 27 27 27 28 27 27 27 27 27 26",  # 0xf0-0xff
    "30",  # EOS
)).split()
EOS = 256


def _build_decoder() -> tuple[list[int], list[bool]]:
    """A 4-bit-at-a-time decoding automaton over the Huffman tree's inner nodes.

    ``steps[state * 16 + nibble]`` is ``next_state << 9 | symbol + 1`` (symbol + 1 == 0:
    none emitted), or -1 when the nibble reaches EOS; no code is shorter than 5 bits, so
    a nibble emits at most one symbol.  ``ends[state]``: a string may end in that state
    (the bits since the last symbol are at most 7 ones, a prefix of EOS).
    """
    lengths = [int(x) for x in _CODE_LENGTHS]
    children: list[list[int]] = [[-1, -1]]  # inner nodes; a leaf is ~symbol
    depth_ones: list[tuple[int, bool]] = [(0, True)]
    code, prev = 0, 0
    for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        code <<= lengths[symbol] - prev
        prev = lengths[symbol]
        node = 0
        for shift in range(prev - 1, 0, -1):
            bit = (code >> shift) & 1
            if children[node][bit] == -1:
                children[node][bit] = len(children)
                depth, ones = depth_ones[node]
                depth_ones.append((depth + 1, ones and bit == 1))
                children.append([-1, -1])
            node = children[node][bit]
        children[node][code & 1] = ~symbol
        code += 1
    steps: list[int] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, emitted = state, -1
            for shift in (3, 2, 1, 0):
                nxt = children[node][(nibble >> shift) & 1]
                if nxt < 0:
                    emitted, node = ~nxt, 0
                    if emitted == EOS:
                        break
                else:
                    node = nxt
            steps.append(-1 if emitted == EOS else node << 9 | emitted + 1)
    ends = [depth <= 7 and ones for depth, ones in depth_ones]
    return steps, ends


_STEPS, _ENDS = _build_decoder()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal (RFC 7541 5.2)."""
    steps = _STEPS
    state = 0
    out = bytearray()
    for byte in data:
        for nibble in (byte >> 4, byte & 0x0F):
            step = steps[state << 4 | nibble]
            if step < 0:
                raise WireError("hpack: EOS symbol inside a Huffman string")
            state = step >> 9
            if step & 0x1FF:
                out.append((step & 0x1FF) - 1)
    if not _ENDS[state]:
        raise WireError("hpack: bad Huffman padding")
    return bytes(out)


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An N-bit prefix integer (5.1) at `pos`; returns (value, next offset)."""
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise WireError("hpack: truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 21:  # > 2^28: no length or index in a bounded block is this large
            raise WireError("hpack: integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise WireError("hpack: truncated string")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise WireError("hpack: string runs past the header block")
    raw = block[pos:end]
    return (huffman_decode(raw) if huffman else raw), end


def decode_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a connection's first header block, in order."""
    dynamic: list[tuple[bytes, bytes]] = []  # newest first
    table_size, table_max = 0, DEFAULT_TABLE
    fields: list[tuple[bytes, bytes]] = []
    list_size = 0
    pos, n = 0, len(block)
    while pos < n:
        first = block[pos]
        if first & 0x80:  # 6.1 indexed field
            index, pos = _integer(block, pos, 7)
            fields.append(_entry(index, dynamic))
        elif first & 0xE0 == 0x20:  # 6.3 dynamic table size update
            if fields:
                raise WireError("hpack: table size update after a field")
            table_max, pos = _integer(block, pos, 5)
            if table_max > MAX_TABLE:
                raise WireError("hpack: table size update above the bound")
            table_size = _evict(dynamic, table_size, table_max)
            continue
        else:  # 6.2 literal: with indexing (01), without (0000) or never indexed (0001)
            indexing = bool(first & 0x40)
            index, pos = _integer(block, pos, 6 if indexing else 4)
            if index:
                name = _entry(index, dynamic)[0]
            else:
                name, pos = _string(block, pos)
            value, pos = _string(block, pos)
            fields.append((name, value))
            if indexing:
                size = len(name) + len(value) + ENTRY_OVERHEAD
                dynamic.insert(0, (name, value))
                table_size = _evict(dynamic, table_size + size, table_max)
        name, value = fields[-1]
        list_size += len(name) + len(value) + ENTRY_OVERHEAD
        if list_size > MAX_LIST:
            raise WireError("hpack: header list larger than 64 KiB")
    return fields


def _entry(index: int, dynamic: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    if 0 < index <= len(STATIC_TABLE):
        return STATIC_TABLE[index - 1]
    index -= len(STATIC_TABLE) + 1
    if 0 <= index < len(dynamic):
        return dynamic[index]
    raise WireError("hpack: index past the tables")


def _evict(dynamic: list[tuple[bytes, bytes]], size: int, limit: int) -> int:
    """Drop the oldest entries until the table fits `limit` (4.4); the new size."""
    while size > limit:
        name, value = dynamic.pop()
        size -= len(name) + len(value) + ENTRY_OVERHEAD
    return size
