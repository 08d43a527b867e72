"""A worker's stock of unconnected sockets made inside tenant namespaces by the binder.

A worker cannot enter a namespace (it has no capability), so a connection to an upstream
inside one (``netns`` set) needs a socket the binder created there. The stock keeps a few per
(namespace identity, address family) and refills them in batches, ahead of need, so that the
binder is not on the path of a request: a request waits for the binder only when the stock is
empty (the first connection after a start, or a burst), and keep-alive pools do the rest.

A namespace's stock is bounded whatever the number of upstreams in it (descriptors.py counts
``LOW + BATCH`` per namespace and family): a refill is asked for once per namespace at a time,
sized to the takers waiting for it, and what is left beyond ``LOW + BATCH`` once they have
taken theirs (concurrent first asks by several upstreams of one namespace, before its identity
is known, each bring a batch) is closed.

Stock is keyed by the identity (st_dev, st_ino) of the namespace the sockets were made in,
never by its name: when the binder reports that a namespace was replaced or has gone
(``netns_changed``), its sockets are closed and the next request asks for sockets in the new
one. The binder resolves the namespace from its own config for the asking tenant's upstream,
so a worker can only get sockets where that tenant's upstreams are.
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
REQUEST_TIMEOUT = 5.0  # seconds to wait for the binder's answer


class StockError(Exception):
    """No socket could be had; the message says why (the binder's reason). ``missing``: the
    binder could not open the upstream's namespace (a fact about the upstream); otherwise the
    cause is on the proxy's side (the binder's limits or silence, a stock taken meanwhile)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


class SocketStock:
    """Unconnected TCP sockets inside tenant namespaces, from the binder, by identity."""

    def __init__(self, loop, request):
        self.loop = loop
        # request(kind, timeout, **fields) -> (answer, fds): the channel to the binder.
        self.request = request
        self.stock: dict[tuple, collections.deque] = {}  # (identity, family) -> (sock, made)
        self.identity: dict[tuple[str, str], tuple] = {}  # (tenant, upstream) -> identity
        self.asking: dict[tuple, asyncio.Future] = {}  # (tenant, upstream, family) -> answer
        self.filling: dict[tuple, asyncio.Future] = {}  # (identity, family) -> the refill
        self.waiting: collections.Counter = collections.Counter()  # (tenant, upstream, family)

    async def take(self, tenant: str, upstream: str, family: int) -> tuple[socket.socket, tuple]:
        """(socket, namespace identity) for a connection to the tenant's upstream; raises
        StockError."""
        identity = self.identity.get((tenant, upstream))
        if identity is not None:
            sockets = self.stock.get((identity, family))
            if sockets:
                sock = self._pop(identity, family, sockets)
                if len(sockets) < LOW:
                    self._refill(tenant, upstream, family, identity)
                return sock, identity
        key = (tenant, upstream, family)
        for _ask in range(ASKS_PER_TAKE):  # a burst's takers share each refill: one may miss
            self.waiting[key] += 1
            try:
                # Shielded: a taker cancelled meanwhile must not cancel the refill others wait for.
                await asyncio.shield(self._refill(tenant, upstream, family, identity))
            finally:
                self.waiting[key] -= 1
                if not self.waiting[key]:
                    del self.waiting[key]
            identity = self.identity.get((tenant, upstream))
            sockets = self.stock.get((identity, family)) if identity is not None else None
            if sockets:
                return self._pop(identity, family, sockets), identity
        raise StockError(f"no socket in the namespace of upstream {upstream}")

    def _pop(self, identity: tuple, family: int, sockets: collections.deque) -> socket.socket:
        """The oldest socket of the namespace's stock, which is then trimmed (:meth:`_trim`)."""
        sock = sockets.popleft()[0]
        self._trim(identity, family, sockets)
        return sock

    def _trim(self, identity: tuple, family: int, sockets: collections.deque) -> None:
        """Close the oldest sockets beyond ``LOW + BATCH`` and one per taker still waiting
        for this namespace and family (a burst's refill brings theirs)."""
        keep = LOW + BATCH + self._waiting_for(identity, family)
        while len(sockets) > keep:
            sockets.popleft()[0].close()

    def _waiting_for(self, identity: tuple, family: int) -> int:
        """Takers waiting for a socket of ``family`` in namespace ``identity`` (those whose
        upstream's namespace is known: the others' first refill brings their own)."""
        return sum(
            count
            for (tenant, upstream, each), count in self.waiting.items()
            if each == family and self.identity.get((tenant, upstream)) == identity
        )

    def _refill(self, tenant: str, upstream: str, family: int, identity) -> asyncio.Future:
        """The refill under way for the namespace ``identity`` (None: not known yet), else
        the one for this upstream, else a new one."""
        future = self.filling.get((identity, family)) if identity is not None else None
        if future is not None and not future.done():  # (done: its callbacks are still due)
            return future
        key = (tenant, upstream, family)
        future = self.asking.get(key)
        if future is None:
            future = self.asking[key] = self.loop.create_task(self._ask(key))
            future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        if identity is not None:
            self.filling[identity, family] = future
            future.add_done_callback(lambda done: self._filled((identity, family), done))
        return future

    def _filled(self, key: tuple, done: asyncio.Future) -> None:
        if self.filling.get(key) is done:  # (not a later refill, begun before this callback)
            del self.filling[key]

    async def _ask(self, key) -> None:
        tenant, upstream, family = key
        known = self.identity.get((tenant, upstream))
        waiting = self._waiting_for(known, family) if known is not None else self.waiting[key]
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
        self.identity[(tenant, upstream)] = identity
        sockets = self.stock.setdefault((identity, family), collections.deque())
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
        which upstreams were in it (they are asked for again)."""
        for key in [k for k in self.stock if k[0] == identity]:
            for sock, _ in self.stock.pop(key):
                sock.close()
        for key in [k for k, v in self.identity.items() if v == identity]:
            del self.identity[key]

    def expire(self, now: float) -> None:
        """Close sockets that waited longer than KEEP_FOR (each holds its namespace), and
        those a burst's takers left (they went away, or took others: :meth:`_trim`)."""
        for key in list(self.stock):
            sockets = self.stock[key]
            while sockets and now - sockets[0][1] > KEEP_FOR:
                sockets.popleft()[0].close()
            self._trim(*key, sockets)
            if not sockets:
                del self.stock[key]

    def close(self) -> None:
        for sockets in self.stock.values():
            for sock, _ in sockets:
                sock.close()
        self.stock.clear()

    def count(self) -> int:
        return sum(len(s) for s in self.stock.values())
