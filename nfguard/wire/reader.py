"""The shape shared by the incremental readers (TLS ClientHello, HTTP head, QUIC Initial).

Each is fed bytes in stream order until it has a result; the result, or the first error,
then sticks, so a caller that feeds one more segment gets the same answer again and a
failed reader never half-recovers from the middle of a stream.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from nfguard.wire.errors import WireError

T = TypeVar("T")


class StickyReader(Generic[T]):
    __slots__ = ("_error", "_result")

    def __init__(self) -> None:
        self._result: T | None = None
        self._error: WireError | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def feed(self, data: bytes) -> T | None:
        """None while more bytes are needed, then the result (again on later calls)."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            return self._feed(bytes(data))
        except WireError as exc:
            self._error = exc
            self._discard()
            raise

    def _feed(self, data: bytes) -> T | None:
        raise NotImplementedError

    def _discard(self) -> None:
        """Drop buffered bytes once failed: nothing will read them again."""
        raise NotImplementedError
