"""The event loops unit tests run their coroutines on: asyncio's, and uvloop's (the workers'
loop) when it is installed."""

from __future__ import annotations

import asyncio

try:
    import uvloop
except ImportError:  # the daemon's fast path is optional
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop else [])


def run(loop_name, coro):
    """Run ``coro`` to its end (20 s at most) on a fresh loop of that name."""
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.close()


class Turns:
    """Counts the turns of the running loop: ``count`` grows by one each turn (a callback
    queued with ``call_soon`` runs once per turn, before the loop polls again) from
    :meth:`start` until :meth:`stop`."""

    def __init__(self):
        self.count = 0
        self.ticking = False

    def start(self) -> None:
        self.ticking = True
        asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self.ticking = False

    def _tick(self) -> None:
        self.count += 1
        if self.ticking:
            asyncio.get_running_loop().call_soon(self._tick)
