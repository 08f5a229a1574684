"""[names] resolvers: whose DNS answers teach names, and the host's own read from its files."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfguard.names.resolvers import LIBC_DEFAULT, TrustedServers, parse_nameservers, system_servers

RESOLVED_STUB_CONF = """\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search example.internal
"""


def test_nameserver_lines_give_canonical_addresses_in_order() -> None:
    text = ("# comment\n; nameserver 192.0.2.99\nnameserver 10.0.0.53\n"
            "nameserver   fe80::1%eth0  \nnameserver FD00:0:0::53\nnameserver dns.example\n"
            "nameserver\nsearch lan\nnameserver 10.0.0.53\noptions ndots:2\n")
    assert parse_nameservers(text) == ("10.0.0.53", "fe80::1", "fd00::53")
    assert parse_nameservers("") == ()


def test_systemd_resolveds_stub_brings_its_upstream_servers() -> None:
    upstreams = "nameserver 192.0.2.1\nnameserver 2001:db8::1\n"
    assert system_servers(RESOLVED_STUB_CONF, upstreams) == (
        "127.0.0.53", "192.0.2.1", "2001:db8::1")
    assert system_servers("nameserver 192.0.2.7\n", upstreams) == ("192.0.2.7",), \
        "resolved's upstreams count only when the host asks resolved"
    assert system_servers(None, None) == LIBC_DEFAULT, "no file: the C library asks localhost"
    assert system_servers("options rotate\n", None) == LIBC_DEFAULT


@given(st.text())
def test_any_resolv_conf_text_gives_addresses_or_nothing(text: str) -> None:
    for server in parse_nameservers(text):
        assert str(ipaddress.ip_address(server)) == server


def test_listed_networks_and_every_server() -> None:
    listed = TrustedServers(("10.0.0.0/24", "::1/128"))
    assert listed.trusts("10.0.0.53") and listed.serves("::1")
    assert not listed.trusts("10.0.1.53") and not listed.serves("10.0.1.53")
    assert TrustedServers(()).trusts("203.0.113.9"), "[]: every server"
    listed.configure(("10.0.1.0/24",))
    assert listed.serves("10.0.1.53") and not listed.serves("10.0.0.53"), "a reload's setting"


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_system_follows_resolv_conf_as_it_changes(tmp_path: Path) -> None:
    conf, upstreams = tmp_path / "resolv.conf", tmp_path / "upstreams.conf"
    write(conf, "nameserver 10.0.0.53\n", 1000)
    clock = [0.0]
    trusted = TrustedServers("system", str(conf), str(upstreams), interval=1.0,
                             clock=lambda: clock[0])

    def at(now: float, ip: str) -> bool:
        clock[0] = now
        trusted.tend()  # the daemon's timer
        return trusted.serves(ip)

    assert at(0.0, "10.0.0.53")
    assert not at(0.1, "192.0.2.1")
    assert trusted.describe() == f"10.0.0.53 ({conf})"

    write(conf, "nameserver 192.0.2.1\n", 2000)  # rewritten in place (a DHCP client)
    assert not at(0.5, "192.0.2.1"), "looked at no more than once a second"
    assert at(1.1, "192.0.2.1")
    assert not at(1.2, "10.0.0.53"), "a server no longer listed is not believed"

    replacement = tmp_path / "new.conf"  # replaced by rename (resolvconf, NetworkManager)
    write(replacement, RESOLVED_STUB_CONF, 3000)
    write(upstreams, "nameserver 198.51.100.1\n", 3000)
    replacement.rename(conf)
    assert at(2.5, "127.0.0.53") and at(2.5, "198.51.100.1")
    assert not at(2.5, "192.0.2.1")

    conf.unlink()
    assert at(4.0, "127.0.0.1") and not at(4.0, "127.0.0.53")
    assert at(-100.0, "127.0.0.1"), "a clock stepped back still checks"


def test_the_verdict_path_never_looks_at_the_files(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    write(conf, "nameserver 10.0.0.53\n", 1000)
    clock = [0.0]
    trusted = TrustedServers("system", str(conf), str(tmp_path / "none"), interval=1.0,
                             clock=lambda: clock[0])
    write(conf, "nameserver 192.0.2.1\n", 2000)
    clock[0] = 5.0
    assert trusted.serves("10.0.0.53") and not trusted.serves("192.0.2.1")
    assert trusted.tend() is True and trusted.serves("192.0.2.1")
    assert trusted.tend() is False, "within the interval"


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    write(conf, "nameserver 10.0.0.53\n", 1000)
    trusted = TrustedServers("system", str(conf), str(tmp_path / "none"))  # read at once
    assert trusted.describe() == f"10.0.0.53 ({conf})"
    assert trusted.refresh() is False
    write(conf, "nameserver 10.0.0.53\n", 1001)
    assert trusted.refresh() is True


def test_each_untrusted_server_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    trusted = TrustedServers(("10.0.0.53",))
    with caplog.at_level(logging.WARNING, logger="nfguard.names.resolvers"):
        for _ in range(3):
            assert not trusted.serves("203.0.113.9"), "a destination check is not logged"
            assert not trusted.trusts("203.0.113.9")
            trusted.configure(("10.0.0.53",))  # a reload with the same setting keeps it all
    assert [r.getMessage() for r in caplog.records] == [
        "DNS answers from 203.0.113.9 teach no names: it is not among the resolvers "
        "(10.0.0.53)"]
