"""Activations take turns on the event loop, so the first ones in are answered first.

A warm activation costs the API's one event loop ~1 ms of CPU in two parts: up to the
member's resume (rate limit, listing, lease, lock, the health request and SIGCONT), then,
once the member has answered, the answer (its `pool_events` outcome, the JSON, the send).
When eight arrive together and all start at once, the loop runs all eight first parts
before any answer: the first request is answered after ~6 of the round's ~8 ms, the median
one after ~7. Taken in turns, two at a time (one uses the loop while the other's member
wakes up), each is answered before the third starts: answers leave in arrival order and
the median one after ~4.5 ms. The last one of the burst leaves when it did before: the
work is the same, only its order changes.

- **A turn ends** when the request's claim is decided (`Turn.end`, before the answer is
  built: building it does not yield the loop), when the work goes to a thread (a cold
  start, Docker, a busy member: the loop is free while it runs), or at the latest
  `hold_s` after it began, so a member slow to answer never holds the others back for more
  than that.
- **Bounded.** At most `max_waiting` requests wait for a turn; past that a request goes on
  without one (no turn, no ordering: what every request did before turns existed). Turns
  only order work, so none is refused for want of one.
- A waiter cancelled (its client went away) leaves the queue; a turn handed to it just as
  it was cancelled is passed on.
"""

from __future__ import annotations

import asyncio
from collections import deque

DEFAULT_SLOTS = 2
DEFAULT_HOLD_S = 0.003
DEFAULT_MAX_WAITING = 256


class Turn:
    """One request's turn (none when `turns` is None); `end` gives it back, once however
    often it is called, and at the latest `turns.hold_s` after it began."""

    def __init__(self, turns: ActivationTurns | None) -> None:
        self._turns = turns
        self._timer = (
            None if turns is None else asyncio.get_running_loop().call_later(turns.hold_s, self.end)
        )

    def end(self) -> None:
        turns, self._turns = self._turns, None
        if turns is not None and self._timer is not None:
            self._timer.cancel()
            turns._give_back()


class ActivationTurns:
    """At most `slots` activations between their start and their claim (see the module)."""

    def __init__(
        self,
        slots: int = DEFAULT_SLOTS,
        hold_s: float = DEFAULT_HOLD_S,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        if slots < 1 or hold_s <= 0 or max_waiting < 0:
            raise ValueError("slots must be at least 1, hold_s positive, max_waiting >= 0")
        self.slots = slots
        self.hold_s = hold_s
        self.max_waiting = max_waiting
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Turns nobody holds now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn now."""
        return len(self._waiters)

    async def take(self) -> Turn:
        """This request's turn: at once when one is free, else after the requests ahead of
        it; at once and without a turn when `max_waiting` already wait."""
        if self._free > 0:
            self._free -= 1
            return Turn(self)
        if self.waiting >= self.max_waiting:
            return Turn(None)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:  # not yet skipped by `_give_back`
                    self._waiters.remove(waiter)
            else:
                self._give_back()  # handed a turn just as it was cancelled: pass it on
            raise
        return Turn(self)  # handed over by `_give_back`, already counted

    def _give_back(self) -> None:
        """Hand the turn to the first request still waiting, else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            # Cancelled but not yet removed by its task (which runs later): skipped.
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
