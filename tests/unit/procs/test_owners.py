"""The kernel's record of socket owners: the time checks that decide if it still holds."""

from __future__ import annotations

import struct

from nfguard.procs.owners import exec_program, image_unchanged, started_before


def test_started_before_allows_the_start_tick() -> None:
    second = 1_000_000_000
    assert started_before(1000, 10 * second, 100)
    assert started_before(1000, 10 * second + second // 200, 100)  # within the tick
    assert not started_before(1001, 10 * second, 100)
    assert started_before(250, 10 * second, 25)


def test_image_unchanged() -> None:
    c = 1000  # connected at
    assert image_unchanged(c, None, None, 2000)  # no exec seen since tracking began
    assert image_unchanged(c, 500, 600, 2000)  # exec'd, then connected, then read
    assert not image_unchanged(c, 500, 600, 550)  # read while that exec ran: read again
    assert not image_unchanged(c, 1500, 1600, 2000)  # exec'd after connecting
    assert not image_unchanged(c, 900, 1100, 2000)  # connected during an exec
    assert not image_unchanged(c, 1500, 600, 2000)  # an exec under way
    assert not image_unchanged(c, 900, None, 2000)  # begun, never seen to end
    assert image_unchanged(c, None, 600, 2000)  # only ends known
    assert not image_unchanged(c, None, 1100, 2000)
    assert image_unchanged(c, c, c, c)  # the same tick: the exec came first


def test_exec_program_shape() -> None:
    """Both recorders: entry[field] = now in place, else a new entry; both jumps land."""
    for field in (0, 1):
        code = exec_program(7, field)
        insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
        assert len(code) == 27 * 8  # two ld_imm64 take two slots each
        assert insns[-1][0] == 0x95 and [op for op, *_ in insns].count(0x85) == 4
        assert insns[5][3] == insns[17][3] == 7  # the map's fd
        jeq, ja = insns[10], insns[12]
        assert (jeq[0], 10 + 1 + jeq[2]) == (0x15, 13)  # no entry: to the insert
        assert (ja[0], 12 + 1 + ja[2]) == (0x05, 25)  # to "r0 = 0; exit"
        assert insns[11][2] == 8 * field and insns[16][2] == -24 + 8 * field
