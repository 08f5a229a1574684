"""The refusal datagram as written to a client (pure: nothing is sent here)."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from nfguard.names.inject import Unsent, datagram
from nfguard.wire.dns import parse_query, refusal
from nfguard.wire.ip import parse_packet


@pytest.mark.parametrize(("layer", "client", "server"), [
    (IP, "10.0.0.2", "10.0.0.1"), (IPv6, "fd00::2", "fd00::1"), (IP, "127.0.0.1", "127.0.0.53")])
def test_the_refusal_comes_from_the_server_to_the_clients_port(layer: type, client: str,
                                                                server: str) -> None:
    raw = bytes(layer(src=client, dst=server) / UDP(sport=40123, dport=53)
                / DNS(id=4321, rd=1, qd=DNSQR(qname="secret.attacker.test", qtype="TXT")))
    packet = parse_packet(raw)
    answer = refusal(parse_query(raw[packet.payload_offset:]))
    sent = layer(datagram(packet, answer))
    assert (sent.src, sent.dst) == (server, client)
    assert (sent[UDP].sport, sent[UDP].dport) == (53, 40123)
    assert bytes(sent[UDP].payload) == answer
    assert DNS(answer).id == 4321 and DNS(answer).rcode == 5  # REFUSED
    # the checksums as the kernel would check them
    fresh = layer(bytes(sent))
    checksum = fresh[UDP].chksum
    del fresh[UDP].chksum
    if layer is IP:
        ip_checksum = fresh[IP].chksum
        del fresh[IP].chksum
        assert layer(bytes(fresh))[IP].chksum == ip_checksum
    assert layer(bytes(fresh))[UDP].chksum == checksum


def test_unsent_refusals_are_kept_not_written() -> None:
    raw = bytes(IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=1, dport=53) / DNS())
    unsent = Unsent()
    assert unsent.send(parse_packet(raw), b"x") is False
    assert [answer for _query, answer in unsent.sent] == [b"x"]
