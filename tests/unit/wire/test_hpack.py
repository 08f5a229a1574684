"""HPACK decoding against RFC 7541's examples (Appendix C) and hostile blocks."""

from __future__ import annotations

import time

import pytest

from nfguard.wire.errors import WireError
from nfguard.wire.hpack import MAX_LIST, MAX_TABLE, STATIC_TABLE, decode_block, huffman_decode


def hexb(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
           (b":authority", b"www.example.com")]
REQUESTS = [
    *REQUEST,
    *REQUEST, (b"cache-control", b"no-cache"),
    (b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
    (b":authority", b"www.example.com"), (b"custom-key", b"custom-value"),
]
# C.3 and C.4: three requests of one connection, plain and Huffman-coded. Their blocks
# back to back are one block to a fresh decoder: the later ones use the first's inserts.
C3 = ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]
C4 = ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]
# C.6: three responses with a 256-byte table (a size update first), so entries are evicted
C6 = ["4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 "
      "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
      "4883 640e ffc1 c0bf",
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad "
      "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 "
      "65c0 03ed 4ee5 b106 3d50 07"]
DATE, LOCATION = b"Mon, 21 Oct 2013 20:13:2", (b"location", b"https://www.example.com")


def test_rfc_request_examples() -> None:
    assert decode_block(hexb(C3[0])) == REQUEST
    assert decode_block(hexb("".join(C3))) == REQUESTS
    assert decode_block(hexb("".join(C4))) == REQUESTS


def test_rfc_response_example_with_eviction() -> None:
    fields = decode_block(hexb("3fe101" + "".join(C6)))  # size update to 256 first
    assert fields[:4] == [(b":status", b"302"), (b"cache-control", b"private"),
                          (b"date", DATE + b"1 GMT"), LOCATION]
    assert fields[4:8] == [(b":status", b"307"), *fields[1:4]]
    assert fields[8:] == [(b":status", b"200"), (b"cache-control", b"private"),
                          (b"date", DATE + b"2 GMT"), LOCATION, (b"content-encoding", b"gzip"),
                          (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; "
                                          b"version=1")]
    # what 256 bytes evicted is gone: the oldest entry (:status 302) is no longer there
    with pytest.raises(WireError, match="index"):
        decode_block(hexb("3fe101" + "".join(C6) + "c3"))
    assert decode_block(hexb("".join(C6) + "c5"))[-1] == (b":status", b"302")


def test_static_table() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[37] == (b"host", b"")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")


def test_huffman_code_is_complete_and_eos_padding_is_checked() -> None:
    assert huffman_decode(hexb("f1e3 c2e5 f23a 6ba0 ab90 f4ff")) == b"www.example.com"
    assert huffman_decode(b"") == b""
    with pytest.raises(WireError, match="padding"):  # 8 bits of padding
        huffman_decode(hexb("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff"))
    with pytest.raises(WireError, match="padding"):  # padding that is not EOS's prefix
        huffman_decode(bytes([0x00]))  # "0" (00000) then 000
    with pytest.raises(WireError, match="EOS"):
        huffman_decode(hexb("ffff fffc"))  # the 30-bit EOS code, then 2 bits


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ("80", "index"),  # index 0
        ("be", "index"),  # 62: the dynamic table is empty
        ("ff80 80 80 80 80 01", "integer"),  # an integer past 2^28
        ("ff", "integer"),  # truncated integer
        ("4185 f1e3", "string"),  # string runs past the block
        ("82 3f e1 01", "size update"),  # a size update after a field
        ("3f e2 ff 03", "bound"),  # a size update to 64 KiB + 1
        ("41", "string"),
    ],
)
def test_bad_blocks(block: str, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_block(hexb(block))


def integer(value: int, prefix: int, flags: int = 0) -> bytes:
    """RFC 7541 5.1, written out independently of the decoder."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([flags | value])
    out, value = [flags | top], value - top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def insert(name: bytes, value: bytes) -> bytes:
    """A literal with incremental indexing, new name, no Huffman."""
    return b"\x40" + integer(len(name), 7) + name + integer(len(value), 7) + value


def test_table_bounds() -> None:
    assert MAX_TABLE == 64 * 1024
    assert decode_block(insert(b"x", b"y") + b"\xbe")[-1] == (b"x", b"y")
    # an entry larger than the table empties it and is not inserted (4.4)
    with pytest.raises(WireError, match="index"):
        decode_block(insert(b"x", b"y") + insert(b"x", b"v" * 4064) + b"\xbe")
    assert decode_block(insert(b"x", b"v" * 4063) + b"\xbe")[-1][1] == b"v" * 4063
    # a table of size 0 (an update first) keeps nothing
    with pytest.raises(WireError, match="index"):
        decode_block(b"\x20" + insert(b"x", b"y") + b"\xbe")


def test_indexed_references_cannot_multiply_the_work() -> None:
    value = b"v" * 4000
    block = insert(b"x", value) + b"\xbe" * 16000  # one insert, 16000 references
    t = time.perf_counter()
    with pytest.raises(WireError, match="64 KiB"):
        decode_block(block)
    assert time.perf_counter() - t < 0.1
    assert MAX_LIST == 64 * 1024
