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
