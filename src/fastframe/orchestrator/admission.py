"""Admission control: how many connections, frame bytes and frames in process, at once.

``ConnectionLimit`` caps open connections (nginx's ``worker_connections``,
PostgreSQL's ``max_connections``): a newcomer beyond it is accepted and
closed at once, and the refusals are logged at most once a second.
``ByteBudget`` bounds the frame bytes held across all connections: a frame
buffer is charged as it grows with the bytes that arrive, and released once
the frame is answered. A request that does not fit waits, in arrival order
but never behind a larger one that does not fit either, and the caller
bounds the wait with its own deadline.
``FrameSlots`` keeps a saturated server from reading faster than it can
process: at most ``depth`` large frames are in memory at once, from their
header to their answer, and a connection that sends the header of one more
waits before its body, which stays in the kernel's socket buffer rather than
ours. Only frames whose bytes flow count: a frame's place is a reservation
until ``SLOT_MIN_BYTES`` of it have arrived (or all of it), and lapses if
they have not within ``SLOT_GRACE``; it is lost again if later ticks bring
less than that. A peer that stalls mid-frame keeps only its bytes, charged
to the budget, and cannot keep the gate closed.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import resource
import time
from typing import Any, Callable, Deque, Dict, Optional

__all__ = ["ConnectionLimit", "ByteBudget", "FrameSlots", "LogThrottle",
           "default_max_connections", "descriptor_room"]

log: logging.Logger = logging.getLogger("fastframe.orchestrator")

# Descriptors kept free for what is not a connection: the listener, the sink,
# the event loop's own, log files, the executor.
_FD_HEADROOM = 64
_DEFAULT_MAX_CONNECTIONS = 4096


def descriptor_room() -> Optional[int]:
    """Connections the descriptor limit leaves room for (``None``: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - _FD_HEADROOM)


def default_max_connections() -> int:
    """``min(4096, RLIMIT_NOFILE soft limit - 64)``, at least 1."""
    room = descriptor_room()
    return _DEFAULT_MAX_CONNECTIONS if room is None else min(_DEFAULT_MAX_CONNECTIONS, room)


class LogThrottle:
    """At most one line a second for something an attacker can repeat at will."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._logged_at = float("-inf")
        self._unlogged = 0

    def due(self) -> Optional[int]:
        """For one more occurrence: ``None`` when it goes unlogged (and counted),
        else how many went unlogged since the last line."""
        now = time.monotonic()
        if now - self._logged_at < self.interval:
            self._unlogged += 1
            return None
        unlogged, self._unlogged, self._logged_at = self._unlogged, 0, now
        return unlogged


class ConnectionLimit:
    """At most ``maximum`` connections open; ``admit()`` says whether one more may be."""

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError(f"max_connections must be >= 1, not {maximum}")
        self.maximum = maximum
        self.open: int = 0
        self._refusals = LogThrottle()

    def admit(self, peer: str) -> bool:
        """Count one more connection, or refuse it (and log, rate-limited)."""
        if self.open < self.maximum:
            self.open += 1
            return True
        unlogged = self._refusals.due()
        if unlogged is not None:
            log.warning("action: accept | result: refused | reason: max_connections | "
                        "max_connections: %d | peer: %s | refused_since_last_line: %d",
                        self.maximum, peer, unlogged + 1)
        return False

    def release(self) -> None:
        self.open -= 1


class _Waiter:
    __slots__ = ("size", "grant")

    def __init__(self, size: int, grant: Callable[[], None]) -> None:
        self.size = size
        self.grant = grant


class ByteBudget:
    """``limit`` bytes shared by every connection's frame buffers (one event loop).

    ``take(n)`` charges ``n`` bytes if they fit now; otherwise ``wait(n,
    grant)`` queues the request and ``grant()`` is called once the bytes are
    charged. ``release(n)`` gives bytes back and grants waiters that now fit.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_buffer_bytes must be >= 1, not {limit}")
        self.limit = limit
        self.held: int = 0
        self._waiters: Deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take(self, n: int) -> bool:
        if self.held + n <= self.limit:
            self.held += n
            return True
        return False

    def wait(self, n: int, grant: Callable[[], None]) -> object:
        """Queue a request for ``n`` bytes; the returned handle goes to ``cancel``."""
        waiter = _Waiter(n, grant)
        self._waiters.append(waiter)
        return waiter

    def cancel(self, handle: Optional[object]) -> None:
        """Withdraw a request (its deadline passed, its connection closed)."""
        try:
            self._waiters.remove(handle)  # type: ignore[arg-type]
        except ValueError:
            pass

    def release(self, n: int) -> None:
        self.held -= n
        if not self._waiters:
            return
        # Whoever fits now goes now: a small frame never waits behind a large one.
        granted = []
        for waiter in self._waiters:
            if self.held + waiter.size <= self.limit:
                self.held += waiter.size
                granted.append(waiter)
        for waiter in granted:
            self._waiters.remove(waiter)
        for waiter in granted:
            waiter.grant()


# A frame holds its slot while it receives at least SLOT_MIN_BYTES per
# SLOT_TICK (640 KB/s, which any healthy sender on a LAN beats by far); a
# reservation must see that many bytes within SLOT_GRACE. A healthy client's
# body is already in the socket buffer when its reservation is made, so the
# loop's next read proves it; a burst of 200 stalled headers holds the gate
# for 200 / depth graces.
SLOT_TICK = 0.1
SLOT_GRACE = 0.005
SLOT_MIN_BYTES = 64 * 1024


class FrameSlots:
    """At most ``depth`` large frames in memory, server-wide (one event loop).

    A frame's header calls ``admit(who)``: ``True`` if a place is reserved
    for it; else ``who`` queues and ``who.slot_granted()`` is called once one
    is. ``arrived(who, complete)`` when SLOT_MIN_BYTES of its body, or all of
    it, are in: ``True`` if the reservation became a slot (still watched
    until complete), ``False`` if it had lapsed. ``who.slot_lost()`` is called
    when a reservation lapses or a slot's body slows down. ``drop(who)`` gives
    up the frame being received; ``release()`` a complete frame's slot, once
    it is answered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"the frame slot depth must be >= 1, not {depth}")
        self.depth = depth
        self.held: int = 0                  # slots: frames whose bytes came fast
        self._loop = loop
        self._reserved: Dict[Any, asyncio.TimerHandle] = {}
        self._waiters: Deque[Any] = collections.deque()
        self._receiving: Dict[Any, int] = {}   # slot holders still receiving -> progress
        self._ticking = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def reserved(self) -> int:
        return len(self._reserved)

    def _room(self) -> bool:
        return self.held + len(self._reserved) < self.depth

    def admit(self, who: Any) -> bool:
        if self._room():
            self._reserve(who)
            return True
        self._waiters.append(who)
        return False

    def cancel(self, who: Any) -> None:
        """``who`` no longer waits (its deadline passed, its connection closed)."""
        try:
            self._waiters.remove(who)
        except ValueError:
            pass

    def arrived(self, who: Any, complete: bool) -> bool:
        timer = self._reserved.pop(who, None)
        if timer is None:
            return False
        timer.cancel()
        self.held += 1
        if not complete:
            self._watch(who)
        return True

    def received(self, who: Any) -> None:
        """A slot holder's frame is complete: its slot stays until ``release()``."""
        self._receiving.pop(who, None)

    def drop(self, who: Any) -> None:
        timer = self._reserved.pop(who, None)
        if timer is not None:
            timer.cancel()
        elif self._receiving.pop(who, None) is not None:
            self.held -= 1
        self._grant()

    def release(self) -> None:
        self.held -= 1
        self._grant()

    def _reserve(self, who: Any) -> None:
        self._reserved[who] = self._loop.call_later(SLOT_GRACE, self._lapse, who)

    def _lapse(self, who: Any) -> None:
        if self._reserved.pop(who, None) is not None:
            who.slot_lost()
            self._grant()

    def _grant(self) -> None:
        while self._waiters and self._room():
            who = self._waiters.popleft()
            self._reserve(who)
            who.slot_granted()

    def _watch(self, who: Any) -> None:
        self._receiving[who] = who.body_progress()
        if not self._ticking:
            self._ticking = True
            self._loop.call_later(SLOT_TICK, self._tick)

    def _tick(self) -> None:
        slow = []
        for who, before in self._receiving.items():
            now = who.body_progress()
            if now - before < SLOT_MIN_BYTES:
                slow.append(who)
            else:
                self._receiving[who] = now
        for who in slow:
            del self._receiving[who]
            self.held -= 1
            who.slot_lost()
        self._grant()
        self._ticking = bool(self._receiving)
        if self._ticking:
            self._loop.call_later(SLOT_TICK, self._tick)
