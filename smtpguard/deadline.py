"""`DeadlineTimer`: one self-re-arming event-loop timer for a deadline that moves all the time.

Used for the client session's idle timeout (moved at every command) and the upstream session's
command/DATA timeouts (armed before each command, disarmed after). Cancelling and re-creating a
`TimerHandle` each time costs more than moving a number: `arm()` only schedules a new timer
when the deadline comes *earlier* than the scheduled one; a timer that fires early sees the
later deadline and re-arms itself; after `disarm()` it fires once and stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    __slots__ = ("_deadline", "_handle", "_loop", "_on_expiry", "_when", "expired")

    def __init__(self, on_expiry: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_expiry = on_expiry
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self.expired = False  # True once a deadline passed while armed

    def arm(self, seconds: float) -> None:
        """The deadline is now `seconds` from now (later or earlier than before)."""
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        if self._handle is None or self._when > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)
            self._when = deadline

    def disarm(self) -> None:
        self._deadline = None  # the timer stays scheduled; it stops itself when it fires

    def cancel(self) -> None:
        """Disarm and drop the scheduled timer (the owner is going away)."""
        self._deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:  # moved on since the timer was set: re-arm
            self._handle = self._loop.call_at(deadline, self._fire)
            self._when = deadline
            return
        self.expired = True
        self._deadline = None
        self._on_expiry()
