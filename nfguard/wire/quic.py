"""QUIC client Initial decryption and ClientHello reassembly (RFC 9000, 9001, 9369).

A QUIC client's ClientHello travels in CRYPTO frames inside Initial packets, protected
with keys anyone can derive from the packet's Destination Connection ID (RFC 9001 5.2).
Getting the SNI therefore means: derive the keys, remove header protection, AEAD-decrypt,
walk the frames, and reassemble the CRYPTO stream, whose frames browsers deliberately split,
reorder and duplicate (Chrome's "chaos protection") and which may span two datagrams.

Versions: QUIC v1 (0x00000001) and v2 (0x6b3343cf, RFC 9369), which differ in the initial
salt, the HKDF labels and the long-header packet type bits.  Everything else is refused.

Bounds: a CRYPTO stream of at most 64 KiB + 4 (the TLS hello bound), 64 datagrams, 1024
CRYPTO frames and 4 key sets (one per client DCID, which changes after a Retry) per
assembler; a CRYPTO stream's buffer never runs more than 4 KiB past the datagram bytes fed
so far (a frame far ahead of the data cannot make it allocate 64 KiB).  Conflicting bytes
at the same CRYPTO offset are an error (RFC 9000 2.2 allows it, and silently picking one
copy could differ from what the server picks).

What cannot start a client's flow is an error at once, never a wait: a first datagram
without an Initial (a short header, a version negotiation packet, an unknown version,
only 0-RTT or Handshake packets), and any datagram that is not a long header before the
hello is complete (1-RTT needs the server's answer to a complete hello).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from nfguard.wire.errors import WireError
from nfguard.wire.reader import StickyReader
from nfguard.wire.tls import MAX_HELLO, HelloResult, parse_client_hello

__all__ = [
    "VERSION_1",
    "VERSION_2",
    "InitialKeys",
    "InitialPacket",
    "QuicHelloAssembler",
    "crypto_frames",
    "decrypt_initials",
    "initial_keys",
]

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

# version -> (initial salt, key label, iv label, hp label, Initial packet type bits)
_VERSIONS: dict[int, tuple[bytes, bytes, bytes, bytes, int]] = {
    VERSION_1: (
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
        b"quic key",
        b"quic iv",
        b"quic hp",
        0b00,
    ),
    VERSION_2: (
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
        b"quicv2 key",
        b"quicv2 iv",
        b"quicv2 hp",
        0b01,
    ),
}
_RETRY_TYPE = {VERSION_1: 0b11, VERSION_2: 0b00}

MAX_CID = 20  # RFC 9000 17.2: v1 (and v2) connection IDs are at most 20 bytes
MAX_CRYPTO = MAX_HELLO + 4  # handshake header + ClientHello body
MAX_DATAGRAMS = 64
MAX_CRYPTO_FRAMES = 1024
CRYPTO_AHEAD = 4096  # how far a CRYPTO stream may run past the datagram bytes fed
MAX_KEYSETS = 4
TAG_LEN = 16
SAMPLE_LEN = 16

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

_U32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial packet protection keys for one (version, DCID)."""

    version: int
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(frozen=True, slots=True)
class InitialPacket:
    """One decrypted client Initial packet."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    payload: bytes


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 7.1) with an empty context."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_keys(dcid: bytes, version: int = VERSION_1) -> InitialKeys:
    """Derive the client Initial keys from the client's first Destination Connection ID."""
    try:
        salt, key_label, iv_label, hp_label, _ = _VERSIONS[version]
    except KeyError:
        raise WireError(f"quic: unsupported version {version:#010x}") from None
    h = hmac.HMAC(salt, hashes.SHA256())  # HKDF-Extract(salt, dcid)
    h.update(dcid)
    initial_secret = h.finalize()
    client = _expand_label(initial_secret, b"client in", 32)
    return InitialKeys(
        version=version,
        key=_expand_label(client, key_label, 16),
        iv=_expand_label(client, iv_label, 12),
        hp=_expand_label(client, hp_label, 16),
    )


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 16 variable-length integer; returns (value, next offset)."""
    if pos >= end:
        raise WireError("quic: truncated varint")
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        raise WireError("quic: truncated varint")
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size


class _Opener:
    """Reusable cipher objects for one key set (creating them costs more than using them)."""

    __slots__ = ("_aead", "_hp", "iv", "keys", "largest")

    def __init__(self, keys: InitialKeys) -> None:
        self.keys = keys
        self.largest = -1  # largest packet number authenticated under these keys
        self.iv = int.from_bytes(keys.iv, "big")
        self._aead = AESGCM(keys.key)
        self._hp = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()

    def open(self, dgram: bytes, h: _Header) -> tuple[int, bytes] | None:
        """Remove header protection and decrypt: (packet number, payload), None on bad tag."""
        pn_offset = h.pn_offset
        if h.end - pn_offset < 4 + SAMPLE_LEN:
            raise WireError("quic: packet too short to sample")
        mask = self._hp.update(dgram[pn_offset + 4 : pn_offset + 4 + SAMPLE_LEN])
        header = bytearray(dgram[h.start : pn_offset + 4])
        header[0] ^= mask[0] & 0x0F
        pn_len = (header[0] & 0x03) + 1
        rel = pn_offset - h.start
        truncated = 0
        for i in range(pn_len):
            header[rel + i] ^= mask[1 + i]
            truncated = (truncated << 8) | header[rel + i]
        del header[rel + pn_len :]
        if h.end - (pn_offset + pn_len) < TAG_LEN:
            raise WireError("quic: packet shorter than its AEAD tag")
        pn = _decode_pn(self.largest, truncated, pn_len * 8)
        nonce = (self.iv ^ pn).to_bytes(12, "big")
        try:
            payload = self._aead.decrypt(nonce, dgram[pn_offset + pn_len : h.end], bytes(header))
        except InvalidTag:
            return None
        if header[0] & 0x0C:
            raise WireError("quic: reserved header bits are set")
        self.largest = max(self.largest, pn)
        return pn, payload


def _decode_pn(largest: int, truncated: int, bits: int) -> int:
    """RFC 9000 A.3: the packet number closest to largest + 1 with these low bits."""
    expected = largest + 1
    win = 1 << bits
    hwin = win >> 1
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


@dataclass(frozen=True, slots=True)
class _Header:
    start: int
    version: int
    initial: bool
    dcid: bytes
    scid: bytes
    token: bytes
    pn_offset: int
    end: int  # offset after this packet in the datagram


def _long_headers(dgram: bytes) -> list[_Header]:
    """Split a datagram into its coalesced long-header packets (RFC 9000 12.2).

    A short-header packet, or the zero padding some clients append, runs to the end of the
    datagram and is left out.  Each packet consumes at least 7 bytes, so this is linear.
    """
    n = len(dgram)
    if n == 0:
        raise WireError("quic: empty datagram")
    if not dgram[0] & 0x80:
        raise WireError("quic: datagram does not start with a long header")
    out: list[_Header] = []
    pos = 0
    while pos < n and dgram[pos] & 0x80:
        h = _long_header(dgram, pos)
        out.append(h)
        pos = h.end
    return out


def _long_header(dgram: bytes, pos: int) -> _Header:
    n = len(dgram)
    first = dgram[pos]
    if pos + 7 > n:
        raise WireError("quic: truncated long header")
    (version,) = _U32.unpack_from(dgram, pos + 1)
    if version not in _VERSIONS:
        if version == 0:
            raise WireError("quic: version negotiation packet")
        raise WireError(f"quic: unsupported version {version:#010x}")
    if not first & 0x40:
        raise WireError("quic: fixed bit is zero")
    ptype = (first >> 4) & 0x03
    p = pos + 5
    dlen = dgram[p]
    if dlen > MAX_CID or p + 1 + dlen >= n:
        raise WireError("quic: bad destination connection ID")
    dcid = dgram[p + 1 : p + 1 + dlen]
    p += 1 + dlen
    slen = dgram[p]
    if slen > MAX_CID or p + 1 + slen > n:
        raise WireError("quic: bad source connection ID")
    scid = dgram[p + 1 : p + 1 + slen]
    p += 1 + slen
    if ptype == _RETRY_TYPE[version]:
        raise WireError("quic: Retry packet from a client")
    initial = ptype == _VERSIONS[version][4]
    token = b""
    if initial:  # only Initial packets carry a token
        tlen, p = _varint(dgram, p, n)
        if p + tlen > n:
            raise WireError("quic: token runs past the datagram")
        token = dgram[p : p + tlen]
        p += tlen
    length, p = _varint(dgram, p, n)
    if p + length > n:
        raise WireError("quic: packet length runs past the datagram")
    if length == 0:
        raise WireError("quic: empty packet")
    return _Header(pos, version, initial, dcid, scid, token, p, p + length)


def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """Walk the frames of a decrypted Initial payload; return its CRYPTO (offset, data).

    Only frames RFC 9000 (table 3) allows in Initial packets are accepted: PADDING, PING,
    ACK, CRYPTO and CONNECTION_CLOSE (transport, 0x1c); anything else is a WireError.
    """
    out: list[tuple[int, bytes]] = []
    n = len(payload)
    if n == 0:
        raise WireError("quic: packet without frames")
    pos = 0
    while pos < n:
        ftype, pos = _varint(payload, pos, n)
        if ftype == FRAME_PADDING:
            pos = n - len(payload[pos:].lstrip(b"\x00"))
        elif ftype == FRAME_PING:
            pass
        elif ftype == FRAME_CRYPTO:
            offset, pos = _varint(payload, pos, n)
            length, pos = _varint(payload, pos, n)
            if pos + length > n:
                raise WireError("quic: CRYPTO frame runs past the packet")
            out.append((offset, payload[pos : pos + length]))
            pos += length
        elif ftype in (FRAME_ACK, FRAME_ACK_ECN):
            for _ in range(3):  # largest acknowledged, ack delay, range count
                value, pos = _varint(payload, pos, n)
            _, pos = _varint(payload, pos, n)  # first ack range
            for _ in range(value):  # each (gap, range) takes >= 2 bytes: bounded by n
                _, pos = _varint(payload, pos, n)
                _, pos = _varint(payload, pos, n)
            if ftype == FRAME_ACK_ECN:
                for _ in range(3):
                    _, pos = _varint(payload, pos, n)
        elif ftype == FRAME_CONNECTION_CLOSE:
            _, pos = _varint(payload, pos, n)  # error code
            _, pos = _varint(payload, pos, n)  # frame type
            rlen, pos = _varint(payload, pos, n)
            if pos + rlen > n:
                raise WireError("quic: CONNECTION_CLOSE reason runs past the packet")
            pos += rlen
        else:
            raise WireError(f"quic: frame type {ftype:#x} not allowed in an Initial packet")
    return out


def decrypt_initials(datagram: bytes) -> list[InitialPacket]:
    """Decrypt every client Initial packet of a datagram with keys from its own DCID.

    Coalesced 0-RTT/Handshake packets are skipped.  An Initial that fails authentication
    raises ``WireError`` (it is not a client Initial for that DCID).
    """
    dgram = bytes(datagram)
    out: list[InitialPacket] = []
    for h in _long_headers(dgram):
        if not h.initial:
            continue
        opened = _Opener(initial_keys(h.dcid, h.version)).open(dgram, h)
        if opened is None:
            raise WireError("quic: Initial packet failed authentication")
        pn, payload = opened
        out.append(InitialPacket(h.version, h.dcid, h.scid, h.token, pn, payload))
    return out


class _CryptoStream:
    """Reassembles the Initial CRYPTO stream: frames may overlap, repeat or come unordered.

    A byte buffer plus a same-sized "received" mask; the work per frame is a few C-level
    slice operations over the frame's span, so reassembly stays linear in the bytes fed.
    """

    __slots__ = ("buf", "frames", "mask", "prefix")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.mask = bytearray()
        self.prefix = 0  # length of the contiguous received prefix
        self.frames = 0

    def add(self, offset: int, data: bytes, fed: int) -> None:
        """Add one frame's data; `fed` is the datagram bytes fed so far (a memory bound)."""
        length = len(data)
        end = offset + length
        if end > MAX_CRYPTO:
            raise WireError("quic: CRYPTO data beyond the 64 KiB ClientHello bound")
        if end > fed + CRYPTO_AHEAD:
            raise WireError("quic: CRYPTO data far beyond the bytes received")
        self.frames += 1
        if self.frames > MAX_CRYPTO_FRAMES:
            raise WireError("quic: too many CRYPTO frames")
        if not length:
            return
        buf, mask = self.buf, self.mask
        if end > len(buf):
            grow = end - len(buf)
            buf.extend(bytes(grow))
            mask.extend(bytes(grow))
        seen = mask[offset:end]
        if seen.count(0) != length:  # overlaps data already received: must be identical
            i = 0
            while i < length:
                j = seen.find(1, i)
                if j < 0:
                    break
                k = seen.find(0, j)
                if k < 0:
                    k = length
                if buf[offset + j : offset + k] != data[j:k]:
                    raise WireError("quic: CRYPTO data differs at an offset sent twice")
                i = k
        buf[offset:end] = data
        mask[offset:end] = b"\x01" * length
        if offset <= self.prefix < end:
            nxt = mask.find(0, self.prefix)
            self.prefix = len(mask) if nxt < 0 else nxt

    def hello_body(self) -> bytes | None:
        """The ClientHello body once all of it is here; None while bytes are missing."""
        if self.prefix < 1:
            return None
        if self.buf[0] != 1:
            raise WireError("quic: CRYPTO stream does not start with a ClientHello")
        if self.prefix < 4:
            return None
        length = int.from_bytes(self.buf[1:4], "big")
        if length > MAX_HELLO:
            raise WireError("quic: ClientHello larger than 64 KiB")
        if self.prefix < 4 + length:
            return None
        return bytes(self.buf[4 : 4 + length])


class QuicHelloAssembler(StickyReader[HelloResult]):
    """Sans-IO: feed a flow's client datagrams; get the ClientHello's ``HelloResult``.

    ``feed()`` returns None while the ClientHello is incomplete and the result once it is
    (again on any later call).  Datagrams may carry coalesced packets; CRYPTO frames may be
    split, reordered, duplicated and spread over several datagrams.  Keys are derived from
    each Initial's DCID; when that fails, the keys of the client's first DCID are tried too,
    since a client keeps them after switching to the server's connection ID (RFC 9001 5.2).
    After a Retry the client starts a new CRYPTO stream under new keys, so streams are kept
    per key set.  Raises ``WireError`` on garbage, on an Initial that authenticates under no
    key set, and on any bound; after an error the assembler stays failed.
    """

    __slots__ = ("_datagrams", "_fed", "_first", "_openers", "_streams")

    def __init__(self) -> None:
        super().__init__()
        self._openers: dict[tuple[int, bytes], _Opener] = {}
        self._streams: dict[tuple[int, bytes], _CryptoStream] = {}
        self._first: tuple[int, bytes] | None = None
        self._datagrams = 0
        self._fed = 0  # datagram bytes fed

    def _discard(self) -> None:
        self._streams.clear()

    def _opener(self, ident: tuple[int, bytes]) -> _Opener:
        opener = self._openers.get(ident)
        if opener is None:
            if len(self._openers) >= MAX_KEYSETS:
                raise WireError("quic: too many connection IDs for one flow")
            opener = self._openers[ident] = _Opener(initial_keys(ident[1], ident[0]))
            if self._first is None:
                self._first = ident
        return opener

    def _feed(self, dgram: bytes) -> HelloResult | None:
        self._datagrams += 1
        if self._datagrams > MAX_DATAGRAMS:
            raise WireError("quic: no complete ClientHello within 64 datagrams")
        self._fed += len(dgram)
        headers = _long_headers(dgram)
        if self._first is None and not any(h.initial for h in headers):
            raise WireError("quic: the first datagram carries no Initial packet")
        for h in headers:
            if not h.initial:
                continue  # 0-RTT / Handshake: not decryptable here, and not needed
            own = (h.version, h.dcid)
            candidates = [own]
            if self._first is not None and self._first != own and self._first[0] == h.version:
                candidates.append(self._first)
            for ident in candidates:
                opened = self._opener(ident).open(dgram, h)
                if opened is not None:
                    break
            else:
                raise WireError("quic: Initial packet failed authentication")
            stream = self._streams.get(ident)
            if stream is None:
                stream = self._streams[ident] = _CryptoStream()
            for offset, data in crypto_frames(opened[1]):
                stream.add(offset, data, self._fed)
            body = stream.hello_body()
            if body is not None:
                self._result = parse_client_hello(body)
                self._streams.clear()
                return self._result
        return None
