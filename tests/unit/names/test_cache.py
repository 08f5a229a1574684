"""DNS-derived name cache: expiry, shared addresses, LRU bound and counters."""

from __future__ import annotations

import pytest

from nfguard.names.cache import NameCache

IP = "192.0.2.10"


def test_expiry_is_ttl_plus_grace() -> None:
    c = NameCache(grace=10, min_ttl=0)
    c.learn(IP, "a.example", ttl=100, now=1000.0)
    assert c.names_for(IP, 1109.9) == {"a.example"}
    assert c.resolved(IP, "a.example", 1109.9)
    assert c.names_for(IP, 1110.0) == frozenset()
    assert not c.resolved(IP, "a.example", 1110.0)
    assert len(c) == 0  # the expired pair was purged when met


def test_min_ttl_floor_and_max_ttl_cap() -> None:
    c = NameCache(grace=0, min_ttl=60, max_ttl=3600)
    c.learn(IP, "lb.example", ttl=0, now=0.0)
    assert c.resolved(IP, "lb.example", 59.0)
    assert not c.resolved(IP, "lb.example", 60.0)
    c.learn(IP, "long.example", ttl=2**31 - 1, now=0.0)
    assert c.resolved(IP, "long.example", 3599.0)
    assert not c.resolved(IP, "long.example", 3600.0)


def test_defaults() -> None:
    c = NameCache()
    assert (c.max_entries, c.grace, c.min_ttl) == (100_000, 300.0, 60.0)
    c.learn(IP, "a.example", ttl=1, now=0.0)
    assert c.resolved(IP, "a.example", 359.0)
    assert not c.resolved(IP, "a.example", 360.0)


def test_shared_ip_keeps_every_name_with_its_own_ttl() -> None:
    c = NameCache(grace=0, min_ttl=0)
    c.learn(IP, "a.example", ttl=100, now=0.0)
    c.learn(IP, "b.example", ttl=10, now=0.0)
    c.learn("192.0.2.11", "a.example", ttl=100, now=0.0)
    assert c.names_for(IP, 5.0) == {"a.example", "b.example"}
    assert c.names_for(IP, 50.0) == {"a.example"}  # b expired, a untouched by it
    assert c.names_for("192.0.2.11", 50.0) == {"a.example"}
    assert len(c) == 2


def test_relearn_extends_and_never_shortens() -> None:
    c = NameCache(grace=0, min_ttl=0)
    c.learn(IP, "a.example", ttl=100, now=0.0)
    c.learn(IP, "a.example", ttl=5, now=10.0)  # shorter: keeps expiry 100
    assert c.resolved(IP, "a.example", 99.0)
    c.learn(IP, "a.example", ttl=100, now=50.0)  # longer: now 150
    assert c.resolved(IP, "a.example", 149.0)
    assert not c.resolved(IP, "a.example", 150.0)
    assert len(c) == 0


def test_names_are_normalised() -> None:
    c = NameCache()
    c.learn(IP, "WWW.Example.COM.", ttl=60, now=0.0)
    assert c.names_for(IP, 1.0) == {"www.example.com"}
    assert c.resolved(IP, "www.EXAMPLE.com.", 1.0)
    c.learn(IP, ".", ttl=60, now=0.0)  # the root name is never bound
    assert len(c) == 1


def test_lru_eviction_order_and_touching() -> None:
    c = NameCache(max_entries=3, grace=0, min_ttl=0)
    c.learn("10.0.0.1", "a", ttl=100, now=0.0)
    c.learn("10.0.0.2", "b", ttl=100, now=0.0)
    c.learn("10.0.0.3", "c", ttl=100, now=0.0)
    assert c.resolved("10.0.0.1", "a", 1.0)  # touch a: b is now the coldest
    c.learn("10.0.0.4", "d", ttl=100, now=1.0)
    assert c.evictions == 1 and len(c) == 3
    assert c.names_for("10.0.0.2", 2.0) == frozenset()
    assert "10.0.0.2" not in c
    assert c.names_for("10.0.0.3", 2.0) == {"c"}  # touch c: a is now the coldest
    c.learn("10.0.0.5", "e", ttl=100, now=2.0)
    assert not c.resolved("10.0.0.1", "a", 3.0)
    assert c.resolved("10.0.0.3", "c", 3.0)
    assert c.evictions == 2
    # re-learning an existing pair touches it and evicts nothing
    c.learn("10.0.0.4", "d", ttl=100, now=3.0)
    assert c.evictions == 2 and len(c) == 3


def test_eviction_of_one_name_keeps_the_ips_other_names() -> None:
    c = NameCache(max_entries=2, grace=0, min_ttl=0)
    c.learn(IP, "old.example", ttl=100, now=0.0)
    c.learn(IP, "new.example", ttl=100, now=1.0)
    c.learn("10.9.9.9", "x.example", ttl=100, now=2.0)
    assert c.names_for(IP, 3.0) == {"new.example"}


def test_counters() -> None:
    c = NameCache(grace=0, min_ttl=0)
    assert c.names_for(IP, 0.0) == frozenset()
    assert not c.resolved(IP, "a.example", 0.0)
    c.learn(IP, "a.example", ttl=10, now=0.0)
    assert c.names_for(IP, 1.0) == {"a.example"}
    assert c.resolved(IP, "a.example", 1.0)
    assert not c.resolved(IP, "b.example", 1.0)
    assert c.names_for(IP, 20.0) == frozenset()  # expired: a miss
    assert (c.hits, c.misses, c.evictions) == (2, 4, 0)


def test_expired_pairs_are_dropped_lazily_and_by_purge() -> None:
    c = NameCache(grace=0, min_ttl=0)
    for i in range(10):
        c.learn(f"10.0.0.{i}", "n.example", ttl=10, now=0.0)
    assert len(c) == 10
    c.learn("10.1.0.1", "fresh.example", ttl=10, now=100.0)  # drops up to two cold ones
    assert len(c) == 9
    assert c.purge(100.0) == 8
    assert len(c) == 1 and c.evictions == 0


def test_bound_holds_under_a_flood() -> None:
    c = NameCache(max_entries=1000)
    for i in range(5000):
        c.learn(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"n{i}.example", 60, now=0.0)
        assert len(c) <= 1000
    assert c.evictions == 4000


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        NameCache(max_entries=0)
    with pytest.raises(ValueError):
        NameCache(min_ttl=100, max_ttl=10)
