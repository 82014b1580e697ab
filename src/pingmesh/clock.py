"""The clock, injected into every component that needs time (tests pass a fake)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time for stored timestamps, monotonic time for durations."""

    def now_s(self) -> float:
        """Wall-clock UTC time, UNIX seconds."""
        ...

    def monotonic_ns(self) -> int:
        """Monotonic time for measuring durations."""
        ...


class SystemClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self._now_s = now_s
        self._mono_ns = 0

    def now_s(self) -> float:
        return self._now_s

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._now_s += seconds
        self._mono_ns += int(seconds * 1e9)
