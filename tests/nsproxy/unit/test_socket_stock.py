"""The socket stock the health checks share with requests (found by the red-team review of the
health checks). The binder's side is played by a function that answers ``need_sockets`` with real
socket descriptors after a delay, as the channel does; the stock itself is the real one."""

from __future__ import annotations

import asyncio
import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from nsproxy.worker.stock import (
    BATCH,
    LOW,
    REQUEST_TIMEOUT,
    SURPLUS_FOR,
    SocketStock,
    StockError,
)


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


class Binder:
    """The binder's side of ``need_sockets``: real sockets after a short delay, made "in" the
    namespace ``namespace_of[upstream]`` (its identity is (namespace, 0)); each socket's inode
    is noted with its namespace, so a test can tell where a taken socket was made."""

    def __init__(self, namespace_of: dict, refused=()):
        self.namespace_of = namespace_of
        self.refused = set(refused)  # tenants over their budget
        self.counts: list[tuple[str, int]] = []  # (tenant, count) of each ask
        self.made: dict[int, int] = {}  # inode -> namespace
        self.asks = 0
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, kind, timeout, **fields):
        assert kind == "need_sockets"
        self.asks += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
        finally:
            self.in_flight -= 1
        self.counts.append((fields["tenant"], fields["count"]))
        if fields["tenant"] in self.refused:
            return {"error": "too many sockets asked for"}, []
        namespace = self.namespace_of[fields["upstream"]]
        fds = [socket.socket().detach() for _ in range(fields["count"])]
        for fd in fds:
            self.made[os.fstat(fd).st_ino] = namespace
        return {"identity": [namespace, 0]}, fds


@settings(max_examples=60, deadline=None)
@given(
    namespace_of=st.lists(st.integers(0, 2), min_size=1, max_size=12).map(
        lambda ns: {f"up{i}": n for i, n in enumerate(ns)}
    ),
    waves=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=64), min_size=1, max_size=4),
)
def test_every_take_gets_a_socket_of_its_upstreams_namespace_and_the_stock_stays_bounded(
    namespace_of, waves
):
    """Upstreams share namespaces (several per namespace, as a tenant's services do); each wave
    is a burst of concurrent takes. Every take gets a socket made in its upstream's namespace;
    once a wave is done, no namespace holds more than LOW + BATCH unused sockets (what
    descriptors.py counts), however many of its upstreams asked at once."""
    names = sorted(namespace_of)

    async def run():
        binder = Binder(namespace_of)
        stock = SocketStock(asyncio.get_running_loop(), binder)
        try:
            for wave in waves:
                ups = [names[i % len(names)] for i in wave]
                taken = await asyncio.gather(*(stock.take("t", up, socket.AF_INET) for up in ups))
                for up, (sock, identity) in zip(ups, taken):
                    assert identity == (namespace_of[up], 0)
                    assert binder.made[os.fstat(sock.fileno()).st_ino] == namespace_of[up]
                    sock.close()
                while stock.asking:  # the low-water refills
                    await asyncio.sleep(0.002)
                stock.expire(asyncio.get_running_loop().time() + SURPLUS_FOR + 0.01)
                for (_tenant, identity, _family), left in stock.stock.items():
                    assert len(left) <= LOW + BATCH, (identity, len(left))
        finally:
            stock.close()
        return binder

    asyncio.run(run())


def test_a_namespace_is_refilled_once_at_a_time_whatever_the_number_of_its_upstreams():
    """20 upstreams in one namespace, its identity known: takes that bring the stock under
    LOW ask the binder for one refill, not one per upstream (which held 20 batches of unused
    sockets for a minute)."""
    ups = {f"up{i}": 0 for i in range(20)}

    async def run():
        binder = Binder(ups)
        stock = SocketStock(asyncio.get_running_loop(), binder)
        try:
            for up in ups:  # each upstream's first take: its identity is learnt
                (await stock.take("t", up, socket.AF_INET))[0].close()
                while stock.asking:
                    await asyncio.sleep(0.002)
            binder.asks = binder.most_in_flight = 0
            for _round in range(5):
                socks = await asyncio.gather(*(stock.take("t", up, socket.AF_INET) for up in ups))
                for sock, _ in socks:
                    sock.close()
                while stock.asking:
                    await asyncio.sleep(0.002)
                stock.expire(asyncio.get_running_loop().time() + SURPLUS_FOR + 0.01)
                assert stock.count() <= LOW + BATCH, stock.count()
        finally:
            stock.close()
        return binder

    binder = asyncio.run(run())
    assert binder.asks >= 1 and binder.most_in_flight == 1, (binder.asks, binder.most_in_flight)


def test_a_burst_of_first_takes_is_served_by_one_refill_sized_to_it():
    """56 takes at once with the stock empty: one ask, for the batch and one socket per taker
    (a refill of a fixed batch left all but 8 without; one trimmed to LOW + BATCH by the first
    taker left the later ones asking again, and some without after four asks)."""

    async def run():
        binder = Binder({"app": 0})
        stock = SocketStock(asyncio.get_running_loop(), binder)
        try:
            taken = await asyncio.gather(
                *(stock.take("t", "app", socket.AF_INET) for _ in range(56)),
                return_exceptions=True,
            )
            for sock, _identity in taken:
                sock.close()
            return binder.asks, len(binder.made), stock.count()
        finally:
            stock.close()

    assert asyncio.run(run()) == (1, 56 + BATCH, BATCH)


def test_a_tenant_over_its_budget_fails_no_take_of_another_in_the_same_namespace():
    """Tenants "a" and "b" have upstreams in one namespace, and the binder refuses a's asks
    (its budget is spent). b's takes, concurrent with a's and after them, are all served, and
    no ask of a's is sized by b's takers: each tenant's stock is its own (b's takers used to
    join a's refill and fail with it, and a's ask counted them)."""
    ups = {"app": 0}

    async def run():
        binder = Binder(ups)
        stock = SocketStock(asyncio.get_running_loop(), binder)
        try:
            for tenant in "ab":  # both learn the namespace's identity
                (await stock.take(tenant, "app", socket.AF_INET))[0].close()
            binder.refused.add("a")  # then a's budget is spent
            takes = [stock.take(tenant, "app", socket.AF_INET) for tenant in "ab" * 40]
            results = await asyncio.gather(*takes, return_exceptions=True)
            for result in results:
                if not isinstance(result, BaseException):
                    result[0].close()
            return results, binder.counts
        finally:
            stock.close()

    results, counts = asyncio.run(run())
    assert not any(isinstance(r, BaseException) for r in results[1::2]), results[1::2]
    assert any(isinstance(r, StockError) for r in results[0::2])
    assert all(count <= BATCH + 40 for tenant, count in counts if tenant == "a"), counts


def test_a_refill_answered_before_its_namespace_was_replaced_is_not_stocked():
    """The channel reads the binder's answer and its ``netns_changed`` for the same namespace
    in one go: the answer only wakes the refill, the report runs at once. The refill then
    resumes after the report, with sockets made in the namespace that was replaced; they must
    be closed, not stocked, and the take must get a socket from the new namespace (before, it
    got the old namespace's, and the stock kept the rest for up to a minute)."""

    async def run():
        loop = asyncio.get_running_loop()
        made: dict[int, int] = {}  # inode -> namespace
        namespaces = iter([1, 2])
        stock = None

        async def binder(kind, timeout, **fields):
            namespace = next(namespaces)
            fds = [socket.socket().detach() for _ in range(fields["count"])]
            for fd in fds:
                made[os.fstat(fd).st_ino] = namespace
            answer = loop.create_future()

            def deliver():
                answer.set_result(({"identity": [namespace, 0]}, fds))
                if namespace == 1:  # read in the same go as the answer
                    stock.namespace_changed((1, 0))

            loop.call_later(0.001, deliver)
            return await answer

        stock = SocketStock(loop, binder)
        try:
            sock, identity = await stock.take("t1", "app", socket.AF_INET)
            where = made[os.fstat(sock.fileno()).st_ino]
            sock.close()
            stocked = {key[1] for key in stock.stock}
            stock.expire(loop.time() + REQUEST_TIMEOUT + 0.1)  # nothing in flight can bring it
            assert not stock.replaced
        finally:
            stock.close()
        return identity, where, stocked

    assert asyncio.run(run()) == ((2, 0), 2, {(2, 0)})
