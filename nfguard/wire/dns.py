"""DNS parsing (RFC 1035): responses, for learning which names an address belongs to, and
queries, for judging which names a client may resolve (and refusing the rest).

The engine accepts a DNS answer only after its names are in the cache, so this parser sits
on the critical path of every lookup on the host: it is struct-based, linear in the message
size, and turns every malformed input into ``WireError``.

Only what the name cache needs is decoded: the header, the question, and the A, AAAA
and CNAME records of the answer section (class IN).  Authority and additional sections are
ignored: the additional section is where cache-poisoning "glue" lives, and names from it
must never be bound to addresses.

The work per answer is bounded (issue 23: a client may make the resolver return 4 KB
answers of 140 records for a zone of its own, to flood the engine): the first 64 answer
records are read, and no more than 256 labels of names decoded (64 uncompressed owners
of 3 labels fit); the rest of the answer section is ignored, and at most 256 bindings are
made.  Fewer names learnt only ever means fewer flows allowed by name.  Real answers have
a few records (a CDN's: a CNAME chain and up to 8 addresses per family).

Trust note: the bindings are exactly what the answer claims, so an answer from an
arbitrary server can bind any address to any name.  The engine learns only from replies
to queries this host sent (conntrack's reply direction: the 5-tuple) and only from the
servers [names] resolvers trusts (nfguard.names.resolvers).  The query id and question are not
compared (only a flow's first query reaches the engine; glibc sends A and AAAA on one
socket), so a forger off the path who guesses a query's source port and races the server
could teach a binding that the client itself then drops for its wrong id.  Comparing
them would not stop the worse case anyway: a process here whose accomplice forges the
answer to its own query knows the id.  A resolver on loopback cannot be forged from
outside (README, "Limits to know").

Queries (issue 24) are read strictly, because a query's bytes are what leaves the host:
one question, no answer or authority records, at most one additional record and that an
EDNS OPT, no compression, nothing after the message.  Anything else is a ``WireError``
and is not let out.  ``refusal`` answers a judged query at once, so a client never waits
for a resolver timeout.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from nfguard.wire.errors import WireError

DNS_PORT = 53  # where servers answer, over UDP and TCP

__all__ = [
    "DNS_PORT",
    "MAX_ANSWERS",
    "MAX_BINDINGS",
    "MAX_CNAME_HOPS",
    "MAX_MESSAGE",
    "DnsQuery",
    "DnsResponse",
    "Edns",
    "NameBinding",
    "Rcode",
    "TcpDnsStream",
    "parse_query",
    "parse_response",
    "refusal",
]

MAX_MESSAGE = 65535  # a DNS message length is a 16-bit field (over TCP) or fits a datagram
MAX_NAME = 255  # RFC 1035 3.1: wire length of a name, length octets included
MAX_LABELS = 127  # 255 octets can hold at most 127 one-character labels
MAX_CNAME_HOPS = 16  # resolvers give up far earlier (BIND: 16, Unbound: 11)
MAX_ANSWERS = 64  # answer records read; the rest of the section is not looked at
MAX_BINDINGS = 256  # (address, name) pairs made; CNAME fan-in x addresses is quadratic
MAX_LABELS_WALKED = 256  # labels decoded per message (a pointer to a known name: none)

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
# Mnemonics of the query types seen in the wild (audit's dns.question.type); others by number.
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX",
              16: "TXT", 17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC",
              33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME", 42: "APL", 43: "DS",
              44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
              50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
              60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB",
              65: "HTTPS", 99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG",
              251: "IXFR", 252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA"}


def type_name(qtype: int) -> str:
    """A query type's mnemonic ("A", "TXT"), or its number for a type not listed."""
    return TYPE_NAMES.get(qtype) or str(qtype)
TYPE_OPT = 41
CLASS_IN = 1

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")

# Bytes kept as-is in a rendered label; everything else becomes an RFC 1035 "\DDD" escape,
# so that a label holding a "." can never render like two labels ("github.com" as one
# label must not equal the two labels "github" "com"), and odd bytes never match a policy.
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_PLAIN_DOT = bytes(sorted(_PLAIN)) + b"."
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class NameBinding(NamedTuple):
    """An address and one name that resolves to it, valid for ``ttl`` seconds (a tuple:
    an answer may make hundreds, and a tuple is made three times faster)."""

    ip: str
    name: str
    ttl: int


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """What the engine needs from one DNS response."""

    id: int
    rcode: int
    truncated: bool
    question: str | None
    bindings: tuple[NameBinding, ...]


def _render(labels: list[bytes]) -> str:
    """Join labels, lower-casing ASCII and escaping anything not a plain hostname byte."""
    joined = b".".join(labels).translate(_LOWER)
    if not joined.translate(None, _PLAIN_DOT) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")  # fast path: an ordinary host name
    return ".".join(
        "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in label.translate(_LOWER))
        for label in labels
    )


class _Spent(WireError):
    """The label budget of one message is spent (answers read so far still count)."""


class _Names:
    """Name decoder for one message, with a memo so compression cannot amplify work.

    Loop protection: every compression pointer must point strictly before the lowest offset
    visited so far, so a walk only moves backwards (RFC 1035 only emits backward pointers).
    Amplification protection: the decoded suffix at every name start and pointer target is
    remembered, so thousands of records pointing at one long name cost one walk.  Labels
    walked in total are capped at ``MAX_LABELS_WALKED`` (`_Spent` past it): a few short
    names cost nothing, 64 distinct names of 24 labels would cost half a millisecond.
    """

    __slots__ = ("budget", "memo", "msg")

    def __init__(self, msg: bytes) -> None:
        self.msg = msg
        self.memo: dict[int, tuple[str, int, int]] = {}  # offset -> (text, wire len, labels)
        self.budget = MAX_LABELS_WALKED

    def read(self, pos: int) -> tuple[str, int]:
        """Decode the name at ``pos``; return it and the offset after it in place."""
        msg, memo = self.msg, self.memo
        n = len(msg)
        if pos + 1 < n and msg[pos] >= 0xC0:  # fast path: a bare pointer to a known name
            target = ((msg[pos] & 0x3F) << 8) | msg[pos + 1]
            cached = memo.get(target)
            if cached is not None and target < pos:
                return cached[0], pos + 2
        start = pos
        labels: list[bytes] = []
        jumps: list[tuple[int, int, int]] = []  # (target, labels before, wire len before)
        end = -1  # offset after the name in place (set at the first pointer)
        low = pos
        wire_len = 0
        tail: tuple[str, int, int] = ("", 1, 0)  # the root
        while True:
            if pos >= n:
                raise WireError("dns: name runs past the end of the message")
            length = msg[pos]
            if length == 0:
                if end < 0:
                    end = pos + 1
                break
            kind = length & 0xC0
            if kind == 0xC0:
                if pos + 1 >= n:
                    raise WireError("dns: truncated compression pointer")
                target = ((length & 0x3F) << 8) | msg[pos + 1]
                if target >= low:
                    raise WireError("dns: compression pointer does not point backwards")
                if end < 0:
                    end = pos + 2
                pos = low = target
                cached = memo.get(target)
                if cached is not None:
                    tail = cached
                    break
                jumps.append((target, len(labels), wire_len))
                continue
            if kind:
                raise WireError("dns: unsupported label type")
            wire_len += length + 1
            if wire_len + 1 > MAX_NAME or len(labels) >= MAX_LABELS:
                raise WireError("dns: name too long")
            if pos + 1 + length > n:
                raise WireError("dns: label runs past the end of the message")
            self.budget -= 1
            if self.budget < 0:
                raise _Spent("dns: too many labels in one message")
            labels.append(msg[pos + 1 : pos + 1 + length])
            pos += 1 + length
        tail_text, tail_wire, tail_count = tail
        total_wire = wire_len + tail_wire
        total_count = len(labels) + tail_count
        if total_wire > MAX_NAME or total_count > MAX_LABELS:
            raise WireError("dns: name too long")
        text = _join(_render(labels), tail_text) if labels else tail_text
        memo[start] = (text, total_wire, total_count)
        for target, before, wire_before in jumps[:2]:  # usually one; bounded work
            rest = labels[before:]
            rest_text = _join(_render(rest), tail_text) if rest else tail_text
            memo[target] = (rest_text, total_wire - wire_before, total_count - before)
        return text, end


def _join(head: str, tail: str) -> str:
    return f"{head}.{tail}" if tail else head


def _ttl(raw: int) -> int:
    """RFC 2181 8: a TTL with the top bit set is treated as zero."""
    return 0 if raw & 0x80000000 else raw


def _message(msg: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """The message as bytes and its length, once it is at least a header and at most
    what DNS can frame (both answers and queries start here)."""
    if not isinstance(msg, bytes):
        msg = bytes(msg)
    n = len(msg)
    if n > MAX_MESSAGE:
        raise WireError("dns: message larger than 65535 bytes")
    if n < _HEADER.size:
        raise WireError("dns: shorter than a header")
    return msg, n


def parse_response(msg: bytes) -> DnsResponse:
    """Parse a DNS response and derive (address, name, ttl) bindings from its answers.

    Each A/AAAA record binds its address to its owner name and to every name that reaches
    the owner through CNAME records of the same answer; a binding's TTL is the minimum TTL
    along the chain from that name.  Only the first ``MAX_ANSWERS`` answer records are
    read and the first ``MAX_BINDINGS`` bindings made.  Raises ``WireError`` on anything
    malformed, on a query (QR=0), on a non-QUERY opcode and on more than one question
    (RFC 9619).  Addresses are in ``socket.inet_ntop``'s text, as nfguard.wire.ip gives
    packets' addresses.
    """
    msg, n = _message(msg)
    ident, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(msg, 0)
    if not flags & 0x8000:
        raise WireError("dns: not a response (QR=0)")
    if (flags >> 11) & 0xF:
        raise WireError("dns: opcode is not QUERY")
    pos = _HEADER.size

    if qdcount > 1:
        raise WireError("dns: more than one question")
    names = _Names(msg)
    question: str | None = None
    if qdcount:
        question, pos = names.read(pos)
        if pos + 4 > n:
            raise WireError("dns: truncated question")
        pos += 4

    addresses: list[tuple[str, str, int]] = []  # (owner, ip, ttl)
    cname: dict[str, tuple[str, int]] = {}  # owner -> (target, ttl); first one wins
    for _ in range(min(ancount, MAX_ANSWERS)):
        try:
            owner, pos = names.read(pos)
        except _Spent:
            break  # the rest is not read
        if pos + _RR_FIXED.size > n:
            raise WireError("dns: truncated resource record")
        rtype, rclass, raw_ttl, rdlen = _RR_FIXED.unpack_from(msg, pos)
        pos += _RR_FIXED.size
        rdend = pos + rdlen
        if rdend > n:
            raise WireError("dns: rdata runs past the end of the message")
        if rclass == CLASS_IN:
            if rtype == TYPE_A:
                if rdlen != 4:
                    raise WireError("dns: A record with rdlength != 4")
                ip = socket.inet_ntop(socket.AF_INET, msg[pos:rdend])
                addresses.append((owner, ip, _ttl(raw_ttl)))
            elif rtype == TYPE_AAAA:
                if rdlen != 16:
                    raise WireError("dns: AAAA record with rdlength != 16")
                ip = socket.inet_ntop(socket.AF_INET6, msg[pos:rdend])
                addresses.append((owner, ip, _ttl(raw_ttl)))
            elif rtype == TYPE_CNAME:
                try:
                    target, tend = names.read(pos)
                except _Spent:
                    break
                if tend != rdend:
                    raise WireError("dns: CNAME target does not fill its rdata")
                if owner not in cname and owner != target:
                    cname[owner] = (target, _ttl(raw_ttl))
        pos = rdend

    bindings = _bind(addresses, cname)
    return DnsResponse(
        id=ident,
        rcode=flags & 0xF,
        truncated=bool(flags & 0x0200),
        question=question,
        bindings=bindings,
    )


def _bind(
    addresses: list[tuple[str, str, int]], cname: dict[str, tuple[str, int]]
) -> tuple[NameBinding, ...]:
    """Expand A/AAAA records through the CNAME graph (at most one CNAME per owner)."""
    # For every CNAME owner, follow the chain to its end: the end name and the min TTL.
    # Chains longer than MAX_CNAME_HOPS, and loops, bind nothing for the names on them.
    reaches: dict[str, list[tuple[str, int]]] = {}  # chain end -> [(alias, min ttl)]
    for alias in cname:
        name, ttl = alias, None
        for _ in range(MAX_CNAME_HOPS):
            step = cname.get(name)
            if step is None:
                break
            name = step[0]
            ttl = step[1] if ttl is None else min(ttl, step[1])
        else:
            continue  # too long or a loop
        if name != alias and ttl is not None:
            reaches.setdefault(name, []).append((alias, ttl))

    out: dict[tuple[str, str], int] = {}
    for owner, ip, ttl in addresses:
        if len(out) >= MAX_BINDINGS:
            break  # the rest is not learnt
        pairs = [(owner, ttl)]
        pairs.extend((alias, min(ttl, chain_ttl)) for alias, chain_ttl in reaches.get(owner, ()))
        for name, t in pairs:
            if not name:
                continue  # the root name is no host
            key = (ip, name)
            known = out.get(key)
            if known is None and len(out) >= MAX_BINDINGS:
                continue  # over the bound: not learnt
            if known is None or known < t:
                out[key] = t
    return tuple(NameBinding(ip, name, t) for (ip, name), t in out.items())


class TcpDnsStream:
    """Split one direction of a DNS-over-TCP stream into messages (RFC 1035 4.2.2): a
    server's answers, or a client's queries (pipelined ones too: each is returned).

    Every message is preceded by a 2-byte length.  Segments may cut messages anywhere and
    one segment may carry several.  At most one incomplete message is ever buffered, so
    pending data stays below ``2 + max_message`` bytes; a declared length larger than
    ``max_message`` (default: the 64 KiB protocol maximum) or shorter than a DNS header
    raises ``WireError``, after which the stream stays broken (framing is lost).
    """

    __slots__ = ("_broken", "_buf", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        if not _HEADER.size <= max_message <= MAX_MESSAGE:
            raise ValueError("max_message must be between 12 and 65535")
        self.max_message = max_message
        self._buf = bytearray()
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes buffered for a message not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add the payload of one segment; return the messages it completes, in order."""
        if self._broken:
            raise WireError("dns/tcp: stream already failed")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            (length,) = _U16.unpack_from(buf, pos)
            if length < _HEADER.size or length > self.max_message:
                self._broken = True
                buf.clear()
                raise WireError(f"dns/tcp: bad message length {length}")
            if n - pos - 2 < length:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]
        return out


# --- queries ----------------------------------------------------------------------------

_QR = 0x8000
_OPCODE = 0x7800
_RA = 0x0080
_ECHOED = _OPCODE | 0x0100 | 0x0010  # opcode, RD and CD are copied into the response
_DO = 0x8000  # EDNS "DNSSEC OK", in the OPT record's TTL field
EDNS_PAYLOAD = 1232  # the UDP payload size a refusal advertises (DNS flag day 2020)
EDE = 15  # RFC 8914 Extended DNS Error option
EDE_BLOCKED = 15  # "the domain is blocked due to a security policy"
EDE_TEXT = b"nfguard policy"


class Rcode(IntEnum):
    """The response codes a refused query may get."""

    NXDOMAIN = 3  # "no such name": every resolver library stops at once, but it is a lie
    REFUSED = 5  # "the server will not answer this client": true, and what nfguard says


class Edns(NamedTuple):
    """What a query's EDNS OPT record says (RFC 6891)."""

    payload: int  # the largest UDP response the client takes
    version: int
    dnssec_ok: bool


class DnsQuery(NamedTuple):
    """One question, as a client asked it."""

    id: int
    flags: int  # the header's flag word as sent (opcode, RD, CD ...)
    name: str  # lower-cased, odd bytes escaped as \DDD, no trailing dot; "" is the root
    qtype: int
    qclass: int
    edns: Edns | None  # None: the query had no OPT record
    question: bytes  # the question section as sent (case kept): a response echoes it

    @property
    def opcode(self) -> int:
        return (self.flags & _OPCODE) >> 11


def parse_query(msg: bytes) -> DnsQuery:
    """Parse a DNS query (a UDP datagram's payload, or one message of a TCP stream).

    Raises ``WireError`` on anything but a standard query (QR=0, opcode QUERY, RCODE 0)
    with exactly one question whose name is not compressed, no answer or authority
    records, and at most one additional record, an EDNS OPT owned by the root whose
    options fill its data exactly; and on any byte after the message.
    """
    msg, n = _message(msg)
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(msg, 0)
    if flags & _QR:
        raise WireError("dns: not a query (QR=1)")
    if flags & _OPCODE:
        raise WireError("dns: opcode is not QUERY")
    if flags & 0xF:
        raise WireError("dns: a query with an RCODE")
    if qdcount != 1:
        raise WireError("dns: a query must ask exactly one question")
    if ancount or nscount:
        raise WireError("dns: a query with answer or authority records")
    if arcount > 1:
        raise WireError("dns: a query with more than one additional record")
    names = _Names(msg)
    start = _HEADER.size
    name, pos = names.read(start)
    if names.memo[start][1] != pos - start:  # the name's wire length differs from its span
        raise WireError("dns: a compressed question name")
    if pos + 4 > n:
        raise WireError("dns: truncated question")
    qtype, qclass = _U16_PAIR.unpack_from(msg, pos)
    question_end = pos + 4
    edns = _edns(msg, question_end) if arcount else None
    if edns is None and question_end != n:
        raise WireError("dns: bytes after the query")
    return DnsQuery(ident, flags, name, qtype, qclass, edns, msg[start:question_end])


def _edns(msg: bytes, pos: int) -> Edns:
    """The OPT record at ``pos``, which must end the message."""
    n = len(msg)
    if pos >= n or msg[pos] != 0:
        raise WireError("dns: the additional record of a query is not an EDNS OPT")
    pos += 1
    if pos + _RR_FIXED.size > n:
        raise WireError("dns: truncated OPT record")
    rtype, payload, ttl, rdlen = _RR_FIXED.unpack_from(msg, pos)
    if rtype != TYPE_OPT:
        raise WireError("dns: the additional record of a query is not an EDNS OPT")
    if ttl >> 24:
        raise WireError("dns: a query with an extended RCODE")
    pos += _RR_FIXED.size
    end = pos + rdlen
    if end != n:
        raise WireError("dns: OPT data does not end the query")
    while pos < end:
        if pos + 4 > end:
            raise WireError("dns: truncated EDNS option")
        pos += 4 + _U16_PAIR.unpack_from(msg, pos)[1]
    if pos != end:
        raise WireError("dns: EDNS option runs past the OPT data")
    return Edns(payload, (ttl >> 16) & 0xFF, bool(ttl & _DO))


def refusal(query: DnsQuery, rcode: Rcode = Rcode.REFUSED) -> bytes:
    """The answer to a query the policy refuses: same id, opcode, RD and CD, the question
    as asked, no records; with an OPT (DO echoed, no client option echoed, an RFC 8914
    "Blocked" error saying why) when the query had one.  RA is set: the answer stands in
    for the host's resolver, and a client told "no recursion" might try elsewhere."""
    flags = _QR | _RA | (query.flags & _ECHOED) | rcode
    additional = b""
    if query.edns is not None:
        ede = _U16_PAIR.pack(EDE, 2 + len(EDE_TEXT)) + _U16.pack(EDE_BLOCKED) + EDE_TEXT
        ttl = _DO if query.edns.dnssec_ok else 0
        additional = b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD, ttl, len(ede)) + ede
    header = _HEADER.pack(query.id, flags, 1, 0, 0, 1 if additional else 0)
    return header + query.question + additional
