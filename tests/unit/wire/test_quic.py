"""QUIC Initial decryption and ClientHello reassembly.

The RFC 9001 / RFC 9369 Appendix A client Initials are decrypted as published.  For the
split / reordered / duplicated cases the test protects packets itself, with a key schedule
written here independently (stdlib hmac), which is first checked to reproduce the RFC
packets byte for byte.  aioquic, when installed, adds real client datagrams.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import itertools
import ssl
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nfguard.wire.errors import WireError
from nfguard.wire.quic import (
    VERSION_1,
    VERSION_2,
    QuicHelloAssembler,
    crypto_frames,
    decrypt_initials,
    initial_keys,
)
from nfguard.wire.tls import HelloResult

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2 / RFC 9369 A.2: the client Initial's plaintext payload (same in both).
RFC_PAYLOAD = binascii.unhexlify(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)

# RFC 9001 A.2: the protected client Initial (1200 bytes).
RFC9001_V1 = binascii.unhexlify(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

# RFC 9369 A.2: the protected client Initial (1200 bytes).
RFC9369_V2 = binascii.unhexlify(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)


# --- an independent client-side packet protector ------------------------------------------

SALTS = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABEL_PREFIX = {VERSION_1: b"quic ", VERSION_2: b"quicv2 "}
INITIAL_TYPE = {VERSION_1: 0, VERSION_2: 1}
ZERO_RTT_TYPE = {VERSION_1: 1, VERSION_2: 2}


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes([i]), hashlib.sha256)
        out += block
        i += 1
    return out[:length]


def client_keys(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    initial = hmac.digest(SALTS[version], dcid, hashlib.sha256)
    secret = expand_label(initial, b"client in", 32)
    p = LABEL_PREFIX[version]
    return (
        expand_label(secret, p + b"key", 16),
        expand_label(secret, p + b"iv", 12),
        expand_label(secret, p + b"hp", 16),
    )


def varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return struct.pack("!H", 0x4000 | v)
    if v < 0x40000000:
        return struct.pack("!I", 0x80000000 | v)
    return struct.pack("!Q", 0xC000000000000000 | v)


def protect(
    payload: bytes,
    *,
    dcid: bytes = RFC_DCID,
    version: int = VERSION_1,
    pn: int = 0,
    pn_len: int = 4,
    scid: bytes = b"",
    token: bytes = b"",
    key_dcid: bytes | None = None,
    reserved: int = 0,
    ptype: int | None = None,
) -> bytes:
    """Build and protect one client long-header packet (Initial unless ptype says so)."""
    key, iv, hp = client_keys(key_dcid if key_dcid is not None else dcid, version)
    ptype = INITIAL_TYPE[version] if ptype is None else ptype
    first = 0xC0 | (ptype << 4) | (reserved << 2) | (pn_len - 1)
    header = struct.pack("!BI", first, version) + bytes([len(dcid)]) + dcid
    header += bytes([len(scid)]) + scid
    if ptype == INITIAL_TYPE[version]:
        header += varint(len(token)) + token
    header += varint(pn_len + len(payload) + 16)  # the length field, always 2+ bytes here
    pn_offset = len(header)
    header += (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")  # truncated encoding
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    packet = bytearray(header + sealed)
    sample = bytes(packet[pn_offset + 4 : pn_offset + 20])
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def padded(frames: bytes, size: int = 1162) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


def tls_hello(server_hostname: str = "video.example.net", grow: int = 0) -> bytes:
    """A real ClientHello handshake message (from `ssl`), optionally grown by a padding ext."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h3"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    record = outgoing.read()
    hs = record[5:]
    if not grow:
        return hs
    body = hs[4:]
    # append a filler extension (OpenSSL already sends padding, 0x15: use a private type)
    off = _ext_offset(body)
    (total,) = struct.unpack_from("!H", body, off)
    extra = struct.pack("!HH", 0xFFCE, grow) + bytes(grow)
    body = body[:off] + struct.pack("!H", total + len(extra)) + body[off + 2 :] + extra
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _ext_offset(body: bytes) -> int:
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 1 + body[pos]
    return pos


HELLO = tls_hello(grow=1300)  # ~1.8 KB: needs two Initial datagrams
EXPECTED = HelloResult(sni="video.example.net", ech=False, alpn=("h3",))


# --- RFC test vectors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (
            VERSION_1,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            VERSION_2,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
    ],
)
def test_initial_keys_match_rfc(version: int, key: str, iv: str, hp: str) -> None:
    keys = initial_keys(RFC_DCID, version)
    assert (keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == (key, iv, hp)
    assert client_keys(RFC_DCID, version) == (keys.key, keys.iv, keys.hp)


@pytest.mark.parametrize(("version", "packet"), [(VERSION_1, RFC9001_V1), (VERSION_2, RFC9369_V2)])
def test_rfc_client_initial(version: int, packet: bytes) -> None:
    (p,) = decrypt_initials(packet)
    assert (p.version, p.dcid, p.scid, p.token, p.packet_number) == (
        version,
        RFC_DCID,
        b"",
        b"",
        2,
    )
    assert p.payload == RFC_PAYLOAD
    frames = crypto_frames(p.payload)
    assert [(o, len(d)) for o, d in frames] == [(0, 241)]
    result = QuicHelloAssembler().feed(packet)
    assert result == HelloResult(sni="example.com", ech=False, alpn=("alpn",))


@pytest.mark.parametrize(("version", "packet"), [(VERSION_1, RFC9001_V1), (VERSION_2, RFC9369_V2)])
def test_test_protector_reproduces_rfc_packets(version: int, packet: bytes) -> None:
    assert protect(RFC_PAYLOAD, version=version, pn=2) == packet


def test_rfc_packet_tampering_is_detected() -> None:
    for pos in (30, 600, len(RFC9001_V1) - 1):  # ciphertext and tag bytes
        bad = bytearray(RFC9001_V1)
        bad[pos] ^= 0x01
        with pytest.raises(WireError, match="authentication"):
            QuicHelloAssembler().feed(bytes(bad))
    bad = bytearray(RFC9001_V1)
    bad[6] ^= 0x01  # DCID: wrong keys
    with pytest.raises(WireError):
        decrypt_initials(bytes(bad))
    # v2 packet relabelled as v1: different salt, so authentication fails
    relabelled = RFC9369_V2[:1] + struct.pack("!I", VERSION_1) + RFC9369_V2[5:]
    with pytest.raises(WireError):
        QuicHelloAssembler().feed(relabelled)


# --- reassembly -------------------------------------------------------------------------------


def pieces(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    bounds = [0, *cuts, len(data)]
    return [(a, data[a:b]) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_crypto_split_reordered_duplicated_across_two_datagrams(version: int) -> None:
    assert 1700 < len(HELLO) < 2000
    p = pieces(HELLO, [100, 500, 900, 1300, 1500])  # 6 pieces
    frames1 = b"\x01" + crypto(*p[3]) + b"\x00\x00" + crypto(*p[0]) + crypto(*p[0])
    frames1 += crypto(*p[1])
    frames2 = crypto(*p[5]) + crypto(*p[2]) + b"\x01" + crypto(*p[4])
    frames2 += crypto(450, HELLO[450:950])  # overlapping duplicate of data from datagram 1
    d1 = protect(padded(frames1), version=version, pn=0)
    d2 = protect(padded(frames2), version=version, pn=1)
    for order in ((d1, d2), (d2, d1)):
        asm = QuicHelloAssembler()
        assert asm.feed(order[0]) is None
        assert asm.feed(order[1]) == EXPECTED
        assert asm.done and asm.feed(b"anything") == EXPECTED


def test_every_two_datagram_split_point() -> None:
    for cut in range(1, len(HELLO), 97):
        d1 = protect(padded(crypto(0, HELLO[:cut])), pn=0)
        d2 = protect(padded(crypto(cut, HELLO[cut:])), pn=1)
        asm = QuicHelloAssembler()
        first = asm.feed(d2)
        assert first is None
        assert asm.feed(d1) == EXPECTED


def test_coalesced_packets_in_one_datagram() -> None:
    small = tls_hello("coalesced.example")
    half = len(small) // 2
    pkt1 = protect(b"\x01" + crypto(half, small[half:]), pn=0, pn_len=1)
    pkt2 = protect(padded(crypto(0, small[:half]), 300), pn=1, pn_len=2)
    zero_rtt = protect(b"\x01" * 40, pn=0, ptype=ZERO_RTT_TYPE[VERSION_1], key_dcid=b"other")
    datagram = pkt1 + pkt2 + zero_rtt + bytes(64)  # trailing zero padding after packets
    got = QuicHelloAssembler().feed(datagram)
    assert got == HelloResult("coalesced.example", False, ("h3",))
    assert [p.packet_number for p in decrypt_initials(datagram)] == [0, 1]


def test_ack_ping_close_and_padding_frames_are_skipped() -> None:
    small = tls_hello("frames.example")
    ack = b"\x02" + varint(5) + varint(10) + varint(2) + varint(1) + varint(0) + varint(1)
    ack += varint(0) + varint(0)
    ack_ecn = b"\x03" + varint(0) * 4 + varint(1) + varint(2) + varint(3)
    close = b"\x1c" + varint(0) + varint(0) + varint(3) + b"bye"
    frames = b"\x00" * 5 + ack + b"\x01" + ack_ecn + crypto(0, small) + close + b"\x00" * 30
    got = QuicHelloAssembler().feed(protect(frames))
    assert got == HelloResult("frames.example", False, ("h3",))
    assert crypto_frames(frames) == [(0, small)]


def test_dcid_switch_keeps_original_keys_and_retry_restarts() -> None:
    # After the server's first Initial, the client sends to the server's CID but keeps the
    # keys of its original DCID (RFC 9001 5.2).
    p = pieces(HELLO, [1000])
    d1 = protect(padded(crypto(*p[0])), pn=0)
    d2 = protect(padded(crypto(*p[1])), pn=1, dcid=b"\x11" * 8, key_dcid=RFC_DCID)
    asm = QuicHelloAssembler()
    assert asm.feed(d1) is None
    assert asm.feed(d2) == EXPECTED
    # After a Retry the client derives keys from the new DCID and resends from offset 0.
    d3 = protect(padded(crypto(0, HELLO[:1000])), pn=2, dcid=b"\x22" * 8, token=b"retry-token")
    d4 = protect(padded(crypto(1000, HELLO[1000:])), pn=3, dcid=b"\x22" * 8, token=b"retry")
    asm = QuicHelloAssembler()
    assert asm.feed(d1) is None
    assert asm.feed(d3) is None
    assert asm.feed(d4) == EXPECTED


def test_packet_number_is_decoded_against_the_largest_seen() -> None:
    # pn 300 in two bytes, then pn 301 sent in one byte (0x2d): only RFC 9000 A.3 decoding
    # gives the right nonce for the second packet.
    d1 = protect(padded(crypto(0, HELLO[:1000])), pn=300, pn_len=2)
    d2 = protect(padded(crypto(1000, HELLO[1000:])), pn=301, pn_len=1)
    asm = QuicHelloAssembler()
    assert asm.feed(d1) is None
    assert asm.feed(d2) == EXPECTED


def test_conflicting_retransmission_is_rejected() -> None:
    d1 = protect(padded(crypto(0, HELLO[:800])), pn=0)
    changed = bytearray(HELLO[300:700])
    changed[50] ^= 0xFF
    d2 = protect(padded(crypto(300, bytes(changed))), pn=1)
    asm = QuicHelloAssembler()
    asm.feed(d1)
    with pytest.raises(WireError, match="differs"):
        asm.feed(d2)
    with pytest.raises(WireError):  # stays failed
        asm.feed(d1)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x40" + bytes(1199),  # short header first
        b"\xc0\x00\x00\x00\x00" + bytes(100),  # version negotiation
        b"\xc0\xff\x00\x00\x1d\x08" + bytes(100),  # draft-29: unsupported
        b"\x80" + struct.pack("!I", VERSION_1) + bytes(100),  # fixed bit 0
        b"\xc0" + struct.pack("!I", VERSION_1) + b"\x15" + bytes(100),  # DCID > 20
        b"\xc0" + struct.pack("!I", VERSION_1) + b"\x08" + bytes(4),  # truncated
    ],
)
def test_garbage_datagrams(datagram: bytes) -> None:
    with pytest.raises(WireError):
        QuicHelloAssembler().feed(datagram)


def test_a_first_datagram_without_an_initial_fails_at_once() -> None:
    zero_rtt = protect(padded(b"\x01"), ptype=ZERO_RTT_TYPE[VERSION_1])
    with pytest.raises(WireError, match="no Initial"):
        QuicHelloAssembler().feed(zero_rtt)
    asm = QuicHelloAssembler()  # after an Initial, 0-RTT alone is fine; 1-RTT is not
    assert asm.feed(protect(padded(crypto(0, HELLO[:500])))) is None
    assert asm.feed(zero_rtt) is None
    with pytest.raises(WireError, match="long header"):
        asm.feed(b"\x40" + bytes(1199))


def test_crypto_buffer_stays_near_the_bytes_fed() -> None:
    far = protect(padded(crypto(20000, b"x")))  # a lone byte 20 KB into the stream
    with pytest.raises(WireError, match="far beyond"):
        QuicHelloAssembler().feed(far)
    # a reordered second datagram (offsets past the first's data) is fine
    dgrams = [protect(padded(crypto(1100, HELLO[1100:])), pn=1),
              protect(padded(crypto(0, HELLO[:1100])), pn=0)]
    asm = QuicHelloAssembler()
    assert asm.feed(dgrams[0]) is None
    assert asm.feed(dgrams[1]) == EXPECTED


def test_frames_not_allowed_in_initial_and_reserved_bits() -> None:
    stream_frame = b"\x08" + varint(0) + b"hello"
    with pytest.raises(WireError, match="not allowed"):
        QuicHelloAssembler().feed(protect(padded(stream_frame)))
    with pytest.raises(WireError, match="reserved"):
        QuicHelloAssembler().feed(protect(padded(crypto(0, HELLO[:10])), reserved=1))
    with pytest.raises(WireError):  # CRYPTO frame longer than the packet
        crypto_frames(b"\x06\x00\x44\x00" + bytes(10))


def test_bounds() -> None:
    with pytest.raises(WireError, match="64 KiB"):
        QuicHelloAssembler().feed(protect(padded(crypto(64 * 1024 + 4, b"x"))))
    huge = b"\x01\x01\x00\x01"  # a ClientHello claiming 64 KiB + 1
    with pytest.raises(WireError, match="64 KiB"):
        QuicHelloAssembler().feed(protect(padded(crypto(0, huge))))
    not_hello = b"\x02\x00\x00\x10"  # ServerHello
    with pytest.raises(WireError, match="ClientHello"):
        QuicHelloAssembler().feed(protect(padded(crypto(0, not_hello))))
    asm = QuicHelloAssembler()
    ping = protect(padded(b"\x01"))
    with pytest.raises(WireError, match="64 datagrams"):
        for _ in range(100):
            asm.feed(ping)
    asm = QuicHelloAssembler()
    with pytest.raises(WireError, match="connection IDs"):
        for i in range(10):
            asm.feed(protect(padded(b"\x01"), dcid=bytes([i]) * 8))


# --- real client datagrams (aioquic) ------------------------------------------------------


@pytest.mark.parametrize("big", [False, True])
def test_aioquic_client_datagrams(big: bool) -> None:
    pytest.importorskip("aioquic")
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    alpn = [f"{'p' * 200}{i}" for i in range(10)] if big else ["h3"]
    cfg = QuicConfiguration(is_client=True, server_name="QUIC.Example.ORG", alpn_protocols=alpn)
    conn = QuicConnection(configuration=cfg)
    conn.connect(("192.0.2.1", 443), now=0.0)
    datagrams = [d for d, _addr in conn.datagrams_to_send(now=0.0)]
    assert len(datagrams) == (3 if big else 1)
    asm = QuicHelloAssembler()
    results = [asm.feed(d) for d in reversed(datagrams)]  # reordered on the way
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == HelloResult("quic.example.org", False, tuple(alpn))
