"""The collector pause around a policy build: nests, and leaves the collector as it was."""

from __future__ import annotations

import gc
import threading

import pytest

from nfguard.policy.collector import SERVICE_THRESHOLDS, collector_paused, for_service


@pytest.fixture(autouse=True)
def collector_on() -> object:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_inside_and_running_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_running_after_an_error() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("bad policy")
    assert gc.isenabled()


def test_left_off_when_it_was_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads() -> None:
    inside, release = threading.Event(), threading.Event()

    def build() -> None:
        with collector_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=build)
    thread.start()
    assert inside.wait(5)
    with collector_paused():
        pass
    assert not gc.isenabled()  # the other build is still running
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_what_a_build_made_is_frozen_unless_it_failed() -> None:
    gc.unfreeze()
    with pytest.raises(ValueError), collector_paused():
        kept = [[i] for i in range(100)]
        raise ValueError("bad policy")
    assert gc.get_freeze_count() == 0
    with collector_paused():
        with collector_paused():
            kept = [[i] for i in range(100)]
        assert gc.get_freeze_count() == 0  # not before the outer pause ends
    assert gc.get_freeze_count() >= len(kept)
    gc.unfreeze()


def test_a_service_collects_its_young_generation_less_often() -> None:
    was = gc.get_threshold()
    try:
        for_service()
        assert gc.get_threshold() == SERVICE_THRESHOLDS
        assert SERVICE_THRESHOLDS[0] > was[0]
    finally:
        gc.set_threshold(*was)
