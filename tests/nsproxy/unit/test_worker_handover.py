"""WorkerPool.hand_over: old workers (a change of user, an upgrade) serve on while their
replacements cannot start, and only within bounds. The pool is the real one; the binder
behind it, the workers' channels and process control are stand-ins that record what the pool
asks of them (the daemon test with a full pids cgroup, test_workers_privileges.py, runs the
whole of it with real processes)."""

from __future__ import annotations

import asyncio
import time
import types

from nsproxy.binder import workers


class Channel:
    closed = False

    def __init__(self):
        self.sent: list[str] = []

    def send(self, kind, fds=(), **fields):
        self.sent.append(kind)


def pool_with(loop, wanted: int, states: list[tuple[int, str]]):
    """A pool with a worker per (index, state); spawns and kills are recorded, not done."""
    binder = types.SimpleNamespace(
        config=types.SimpleNamespace(timeouts={"header_read": 10}),
        listeners=types.SimpleNamespace(resize=lambda count: 0, trim=lambda: None),
    )
    pool = workers.WorkerPool(binder, loop)
    pool.wanted = wanted
    pool.spawned, pool.killed = [], []
    pool.spawn = pool.spawned.append
    pool.kill = lambda handle, why: pool.killed.append(handle.pid)
    handles = []
    for pid, (index, state) in enumerate(states, 100):
        handle = workers.WorkerHandle(pid, -1, index, state=state)
        handle.channel = Channel()
        pool.workers[pid] = handle
        handles.append(handle)
    return pool, handles


def test_an_old_worker_without_a_replacement_serves_on_then_drains_after_the_bound(monkeypatch):
    monkeypatch.setattr(workers, "KEEP_OLD_FOR", 0.05)

    async def main():
        pool, (old0, old1, new0) = pool_with(
            asyncio.get_running_loop(), 2, [(0, "old"), (1, "old"), (0, "serving")]
        )
        pool.hand_over([old0, old1], 0)
        states = (old0.state, old1.state)  # index 0 is replaced; index 1 is not (yet)
        await asyncio.sleep(0.1)
        return states, old1.state, old1.channel.sent

    states, later, sent = asyncio.run(main())
    assert states == ("draining", "old")
    assert later == "draining" and sent == ["drain"]


def test_a_kept_old_worker_drains_when_its_replacement_serves():
    async def main():
        pool, (old, new) = pool_with(asyncio.get_running_loop(), 1, [(0, "old"), (0, "starting")])
        pool.hand_over([old], 0)
        kept = old.state
        pool._message(new, {"type": "ready", "generation": 1}, [])
        return kept, old.state, new.state

    assert asyncio.run(main()) == ("old", "draining", "serving")


def test_a_kept_old_worker_that_stops_talking_is_killed_and_one_beyond_a_shrink_retires():
    async def main():
        pool, (old0, old1) = pool_with(asyncio.get_running_loop(), 2, [(0, "old"), (1, "old")])
        pool.hand_over([old0, old1], 0)
        old0.last_heard = time.monotonic() - workers.HUNG_AFTER - 1
        pool.sweep()
        pool.resize(1)
        return pool.killed, old1.state

    killed, shrunk = asyncio.run(main())
    assert killed == [100]
    assert shrunk == "draining"
