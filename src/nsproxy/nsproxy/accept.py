"""One accept path for every tenant listener: a single epoll set per worker.

An event-loop server object per listening socket costs about 0.8 kB of process memory (server,
handle, lists, context); with thousands of tenants that was the largest per-tenant item. Here
a listener costs its kernel socket and one dict entry. Accepted sockets are handed to the loop
with ``connect_accepted_socket``, so connections behave as with ``create_server`` (same
transports, TLS handled by the loop, TCP_NODELAY set by uvloop).

Spreading accepts over workers without a thundering herd. Every worker holds the same listening
sockets (the binder made one per listener) and registers them with EPOLLEXCLUSIVE (epoll_ctl(2),
Linux 4.5): a new connection wakes one waiting worker, not all. The kernel honours that only for
a task blocked in epoll_wait on this very epoll set (an event loop that merely watches the set's
fd is woken for every connection, as if the flag were not there), so each worker has one small
thread that waits on the set and hands the wake-up to the event loop, which accepts; the thread
waits again only once the loop has accepted. A busy worker is therefore not waiting and the next
connection wakes another one. Measured on 2 cores with 4 workers and 2000 sequential
connections: 1203 wake-ups that found nothing to accept with the plain set, 49 with this.
SO_REUSEPORT groups (a socket per listener per worker) avoid the herd too, but cost N sockets
per listener (64 000 at 1000 tenants on 64 cores), leave a dead worker's share of new
connections waiting until its replacement runs, and let any process of the same user in the
tenant's namespace join the group; see src/nsproxy/README.md for the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import select
import socket
import threading

log = logging.getLogger("nsproxy")

ACCEPT_BATCH = 64  # connections accepted per listener per wake-up (the rest on the next one)
PAUSE_WHEN_OUT_OF_FILES = 0.5  # seconds a listener stops accepting after EMFILE/ENFILE
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)


class Acceptor:
    """Accepts on many listening sockets; ``add`` starts one, ``remove`` stops and closes it.

    Nothing is accepted before ``start``: the daemon binds every tenant first (the kernel
    completes handshakes meanwhile), so that the objects of a burst of early connections are
    not interleaved with the tenants' long-lived ones, which would pin the burst's memory.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.epoll = select.epoll()
        # fd -> (listening socket, protocol factory, ssl context or None, handshake timeout,
        #        whether clients speak first)
        self.listeners: dict[int, tuple] = {}
        self.accepted = 0  # connections accepted so far (the daemon's sweep watches bursts)
        self.wakeups = 0  # times the loop was woken to accept
        self.empty_wakeups = 0  # ... and found nothing (another worker took it)
        self.started = False
        self.closed = False
        self.turn = threading.Event()  # set by the loop when the waiter may wait again
        # Wakes the waiter thread for close(): registered without EPOLLEXCLUSIVE.
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.epoll.register(self.stop_r, select.EPOLLIN)
        self.waiter: threading.Thread | None = None

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.waiter = threading.Thread(target=self._wait, name="accept-wait", daemon=True)
            self.waiter.start()

    def _wait(self) -> None:
        """The waiter thread: block in epoll_wait (so that EPOLLEXCLUSIVE wakes only this
        worker), hand over to the loop, wait for it to have accepted, repeat."""
        poll = self.epoll.poll
        turn = self.turn
        while not self.closed:
            try:
                poll(-1, 1)  # one event is enough to know: the loop looks at all of them
            except (OSError, ValueError):
                return
            if self.closed:
                return
            turn.clear()
            try:
                self.loop.call_soon_threadsafe(self._ready)
            except RuntimeError:  # the loop is closed
                return
            turn.wait()

    def add(
        self,
        sock: socket.socket,
        factory,
        ssl_ctx=None,
        handshake_timeout=None,
        client_first: bool = False,
    ) -> None:
        """Serve ``sock``. ``client_first``: the protocol's clients always speak first (HTTP,
        TLS). The kernel then keeps a new connection to itself until its first bytes arrive
        (TCP_DEFER_ACCEPT, up to ``handshake_timeout``), and one closed before it sent anything
        is dropped unserved: idle connects, port probes and TCP health checks cost nothing."""
        if client_first:
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, math.ceil(handshake_timeout or 1)
            )
        sock.setblocking(False)
        fd = sock.fileno()
        self.epoll.register(fd, select.EPOLLIN | EPOLLEXCLUSIVE)
        self.listeners[fd] = (sock, factory, ssl_ctx, handshake_timeout, client_first)

    def remove(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock`` and close it (open connections are not touched)."""
        fd = sock.fileno()
        if self.listeners.get(fd, (None,))[0] is sock:
            del self.listeners[fd]
            # Paused after EMFILE: not registered right now.
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
        sock.close()

    def close(self) -> None:
        for sock, *_ in list(self.listeners.values()):
            self.remove(sock)
        self.closed = True
        with contextlib.suppress(OSError):
            os.write(self.stop_w, b"x")
        self.turn.set()
        if self.waiter is not None:
            self.waiter.join(5)
        self.epoll.close()
        os.close(self.stop_r)
        os.close(self.stop_w)

    def _ready(self) -> None:
        try:
            if self.closed:
                return
            self.wakeups += 1
            before = self.accepted
            for fd, _ in self.epoll.poll(0):
                entry = self.listeners.get(fd)
                if entry is not None:
                    self._accept(fd, entry)
            if self.accepted == before:
                self.empty_wakeups += 1
        finally:
            self.turn.set()

    def _accept(self, fd: int, entry: tuple) -> None:
        sock, factory, ssl_ctx, handshake_timeout, client_first = entry
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Level-triggered: without a pause the loop would spin on this listener.
                    log.error("accept: %s; pausing this listener briefly", exc.strerror)
                    self.epoll.unregister(fd)
                    self.loop.call_later(PAUSE_WHEN_OUT_OF_FILES, self._resume, fd, sock)
                    return
                continue  # ECONNABORTED and the like: that client is gone, accept the next
            conn.setblocking(False)
            if client_first and _closed_before_speaking(conn):
                conn.close()  # a port probe or TCP health check: no transport, no protocol
                continue
            self.accepted += 1
            self.loop.create_task(self._serve(conn, factory, ssl_ctx, handshake_timeout))

    def _resume(self, fd: int, sock: socket.socket) -> None:
        entry = self.listeners.get(fd)
        if entry is not None and entry[0] is sock:
            self.epoll.register(fd, select.EPOLLIN | EPOLLEXCLUSIVE)

    async def _serve(self, conn, factory, ssl_ctx, handshake_timeout) -> None:
        try:
            if ssl_ctx is None:
                await self.loop.connect_accepted_socket(factory, conn)
            else:
                await self.loop.connect_accepted_socket(
                    factory, conn, ssl=ssl_ctx, ssl_handshake_timeout=handshake_timeout
                )
        except (OSError, asyncio.TimeoutError) as exc:
            # A failed TLS handshake or a client gone before it was served: the loop has
            # closed the connection; create_server would not report it either.
            log.debug("accepted connection not served: %s", exc)
        except Exception:
            conn.close()
            log.exception("accepted connection not served")


def _closed_before_speaking(conn: socket.socket) -> bool:
    """Whether the peer closed (or reset) the connection without sending a byte. With
    TCP_DEFER_ACCEPT on the listener, the kernel hands over such a connection only once its
    FIN has arrived, so probes are recognised here at the cost of one recv."""
    try:
        return not conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return False  # nothing yet: an ordinary client
    except OSError:
        return True  # reset already
