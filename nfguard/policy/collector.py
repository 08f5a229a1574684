"""The cyclic garbage collector, paused while a policy is built.

A policy of 100k rules is a few million objects, none of them in a reference cycle. With
the collector running, each full collection walks every object alive (the policy growing,
and the rest of the daemon): 1.6 s of a 3.6 s load, in pauses of up to 0.2 s that hold the
GIL, so the packet thread stalls while a reload builds. Paused, nothing is lost: reference
counting frees what it always freed, and collections go on as due once the build is done.
The collector is process-wide, so pauses nest and end with the last one.

When the last one ends well, what is alive is frozen first (gc.freeze: left out of every
later collection), else the first collections would scan the whole new policy at once,
and each full one later would again. Reference counting still frees a replaced policy.
After an error nothing is frozen: a traceback's reference cycles must stay collectable.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0:
                if ok:
                    gc.freeze()
                if _was_enabled:
                    gc.enable()
