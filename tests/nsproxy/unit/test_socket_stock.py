"""The socket stock the health checks share with requests (found by the red-team review of the
health checks). The binder's side is played by a function that answers ``need_sockets`` with real
socket descriptors after a delay, as the channel does; the stock itself is the real one."""

from __future__ import annotations

import asyncio
import socket

from nsproxy.worker.stock import SocketStock


def test_a_cancelled_taker_does_not_cancel_the_refill_others_wait_for():
    """A health check stopped by a reload (Check.stop cancels its task) while its probe waits
    in ``take`` for the refill must not take the refill down with it: a request of the same
    tenant waiting for the same refill must still get its socket (the refill is shielded: a
    waiter awaiting the shared task itself cancelled it, and the request got CancelledError)."""

    async def binder(kind, timeout, **fields):
        await asyncio.sleep(0.05)
        socks = [socket.socket() for _ in range(fields["count"])]
        fds = [s.detach() for s in socks]
        return {"identity": [1, 2]}, fds

    async def run():
        stock = SocketStock(asyncio.get_running_loop(), binder)
        probe = asyncio.create_task(stock.take("t1", "app", socket.AF_INET))
        request = asyncio.create_task(stock.take("t1", "app", socket.AF_INET))
        await asyncio.sleep(0.01)
        probe.cancel()  # the check is stopped by a reload
        try:
            sock, identity = await request
        except asyncio.CancelledError:
            return "the request was cancelled"
        finally:
            stock.close()
        sock.close()
        return identity

    assert asyncio.run(run()) == (1, 2)
