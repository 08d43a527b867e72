"""A worker's stock of unconnected sockets made inside tenant namespaces by the binder.

A worker cannot enter a namespace (it has no capability), so a connection to an upstream
inside one (``netns`` set) needs a socket the binder created there. The stock keeps a few per
(tenant, namespace identity, address family) and refills them in batches, ahead of need, so
that the binder is not on the path of a request: a request waits for the binder only when the
stock is empty (the first connection after a start, or a burst), and keep-alive pools do the
rest.

Each tenant has its own stock, even in a namespace another tenant's upstreams share: what the
binder makes for a tenant counts in that tenant's budget (binder/socket_budget.py), so one
tenant's refused refill never fails another's connections. A tenant's stock in a namespace is
bounded whatever the number of its upstreams there (descriptors.py counts ``LOW + BATCH`` per
tenant, namespace and family): one refill at a time, sized to the takers waiting for it
(:data:`MOST` at most), and what is left beyond ``LOW + BATCH`` for a second (concurrent first
asks by several upstreams, before the namespace's identity is known, each bring a batch) is
closed by :meth:`SocketStock.expire`.

Stock is keyed by the identity (st_dev, st_ino) of the namespace the sockets were made in,
never by its name: when the binder reports that a namespace was replaced or has gone
(``netns_changed``), its sockets are closed and the next request asks for sockets in the new
one. A refill answered before that report but resumed after it (the channel read both at
once) is closed too, not stocked: the stock remembers each reported identity for as long as
an ask can last (:data:`REQUEST_TIMEOUT`). The binder resolves the namespace from its own
config for the asking tenant's upstream, so a worker can only get sockets where that tenant's
upstreams are.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket

from nsproxy.channel import ChannelError, close_fds

log = logging.getLogger("nsproxy")

LOW = 2  # refill when fewer sockets than this are left
BATCH = 8  # sockets asked for per refill, beyond one per taker waiting for it
MOST = 64  # sockets asked for at once (binder/sockets.py MAX_COUNT)
ASKS_PER_TAKE = 4  # refills a take waits for before it fails (others took each one's sockets)
KEEP_FOR = 60.0  # seconds an unused stocked socket is kept
SURPLUS_FOR = 1.0  # seconds sockets beyond LOW + BATCH are kept (a burst's takers take theirs)
REQUEST_TIMEOUT = 5.0  # seconds to wait for the binder's answer


class StockError(Exception):
    """No socket could be had; the message says why (the binder's reason). ``missing``: the
    binder could not open the upstream's namespace (a fact about the upstream); otherwise the
    cause is on the proxy's side (the binder's limits or silence, a stock taken meanwhile)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


class SocketStock:
    """Unconnected TCP sockets inside tenant namespaces, from the binder, by tenant and
    namespace identity."""

    def __init__(self, loop, request):
        self.loop = loop
        # request(kind, timeout, **fields) -> (answer, fds): the channel to the binder.
        self.request = request
        # (tenant, identity, family) -> deque of (socket, when made)
        self.stock: dict[tuple, collections.deque] = {}
        self.identity: dict[tuple[str, str], tuple] = {}  # (tenant, upstream) -> identity
        self.asking: dict[tuple, asyncio.Task] = {}  # (tenant, upstream, family) -> its refill
        self.filling: dict[tuple, asyncio.Task] = {}  # (tenant, identity, family) -> its refill
        self.waiters: collections.Counter = collections.Counter()  # refill -> takers waiting
        self.replaced: dict[tuple, float] = {}  # identity -> when reported replaced or gone

    async def take(self, tenant: str, upstream: str, family: int) -> tuple[socket.socket, tuple]:
        """(socket, namespace identity) for a connection to the tenant's upstream; raises
        StockError."""
        identity = self.identity.get((tenant, upstream))
        if identity is not None:
            sockets = self.stock.get((tenant, identity, family))
            if sockets:
                sock = sockets.popleft()[0]
                if len(sockets) < LOW:
                    self._refill(tenant, upstream, family, identity)
                return sock, identity
        for _ask in range(ASKS_PER_TAKE):  # a burst's takers share each refill: one may miss
            refill = self._refill(tenant, upstream, family, identity)
            self.waiters[refill] += 1
            try:
                # Shielded: a taker cancelled meanwhile must not cancel the refill others wait for.
                await asyncio.shield(refill)
            finally:
                self.waiters[refill] -= 1
                if not self.waiters[refill]:
                    del self.waiters[refill]
            identity = self.identity.get((tenant, upstream))
            sockets = self.stock.get((tenant, identity, family)) if identity is not None else None
            if sockets:
                return sockets.popleft()[0], identity
        raise StockError(f"no socket in the namespace of upstream {upstream}")

    def _refill(self, tenant: str, upstream: str, family: int, identity) -> asyncio.Task:
        """The refill under way for the tenant's namespace ``identity`` (None: not known yet),
        else the one for this upstream, else a new one."""
        if identity is not None:
            refill = self.filling.get((tenant, identity, family))
            if refill is not None and not refill.done():  # (done: its callbacks are still due)
                return refill
        key = (tenant, upstream, family)
        refill = self.asking.get(key)
        if refill is None:
            refill = self.asking[key] = self.loop.create_task(self._ask(key))
            refill.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        if identity is not None:
            self.filling[tenant, identity, family] = refill
            refill.add_done_callback(lambda done: self._filled((tenant, identity, family), done))
        return refill

    def _filled(self, key: tuple, done: asyncio.Task) -> None:
        if self.filling.get(key) is done:  # (not a later refill, begun before this callback)
            del self.filling[key]

    async def _ask(self, key) -> None:
        tenant, upstream, family = key
        # This task is the refill its takers count themselves in (take): those that came in
        # the turn that made it are counted by now.
        waiting = self.waiters[asyncio.current_task()]
        asked = self.loop.time()
        try:
            answer, fds = await self.request(
                "need_sockets",
                REQUEST_TIMEOUT,
                tenant=tenant,
                upstream=upstream,
                family=family,
                count=min(MOST, BATCH + waiting),
            )
        except (asyncio.TimeoutError, ChannelError) as exc:
            raise StockError(f"the binder did not answer: {exc or 'timeout'}") from None
        finally:
            self.asking.pop(key, None)
        error = answer.get("error")
        identity = answer.get("identity")
        if error or not isinstance(identity, list) or len(identity) != 2:
            close_fds(fds)
            raise StockError(
                str(error or "bad answer from the binder"), answer.get("missing") is True
            )
        identity = tuple(identity)
        if self.replaced.get(identity, -1.0) >= asked:
            # Made in a namespace reported replaced since: its takers ask again (take).
            close_fds(fds)
            return
        self.identity[(tenant, upstream)] = identity
        sockets = self.stock.setdefault((tenant, identity, family), collections.deque())
        made = self.loop.time()
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sockets.append((sock, made))

    def forget(self, tenant: str, upstream: str) -> None:
        """The tenant's upstream changed or went away (a reload): its next socket is asked
        for again, so that one moved to another namespace never gets the old one's."""
        self.identity.pop((tenant, upstream), None)

    def namespace_changed(self, identity: tuple) -> None:
        """The namespace ``identity`` was replaced or has gone: close its sockets and forget
        which upstreams were in it (they are asked for again). A refill in flight that
        brings sockets made in it closes them (_ask)."""
        self.replaced[identity] = self.loop.time()
        for key in [k for k in self.stock if k[1] == identity]:
            for sock, _ in self.stock.pop(key):
                sock.close()
        for key in [k for k, v in self.identity.items() if v == identity]:
            del self.identity[key]

    def expire(self, now: float) -> None:
        """Close sockets that waited longer than KEEP_FOR (each holds its namespace), and
        those beyond ``LOW + BATCH`` that waited longer than SURPLUS_FOR (a burst's takers
        have taken theirs by then, oldest first). Forget replaced identities no ask in
        flight can bring any more."""
        for identity in [i for i, when in self.replaced.items() if now - when > REQUEST_TIMEOUT]:
            del self.replaced[identity]
        for key in list(self.stock):
            sockets = self.stock[key]
            while sockets and (
                now - sockets[0][1] > KEEP_FOR
                or (len(sockets) > LOW + BATCH and now - sockets[0][1] > SURPLUS_FOR)
            ):
                sockets.popleft()[0].close()
            if not sockets:
                del self.stock[key]

    def close(self) -> None:
        for sockets in self.stock.values():
            for sock, _ in sockets:
                sock.close()
        self.stock.clear()

    def count(self) -> int:
        return sum(len(s) for s in self.stock.values())
