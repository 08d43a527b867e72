"""One accept path for every tenant listener: a single epoll set per worker.

An event-loop server object per listening socket costs about 0.8 kB of process memory (server,
handle, lists, context); with thousands of tenants that was the largest per-tenant item. Here
a listener costs its kernel socket and one small object. Accepted sockets are handed to the loop
with ``connect_accepted_socket``, so connections behave as with ``create_server`` (same
transports, TLS handled by the loop, TCP_NODELAY set by uvloop).

Spreading accepts over workers without a thundering herd: each worker accepts on its own
socket of each listener, all of them one SO_REUSEPORT group made by the binder
(binder/listeners.py); the kernel gives each new connection to one socket of the group, so only
that worker is woken. Measured against one shared socket per listener (2000 sequential
connections, 2 to 8 workers, context switches of all workers per connection): shared socket,
every worker's loop watching it: 2.8 (2 workers), 4.8 (4), 10.0 (8); shared socket with
EPOLLEXCLUSIVE, which the kernel honours only for a task blocked in epoll_wait on that set
(so a waiter thread per worker, handing over to the loop): 5.6, 6.3, 7.9; SO_REUSEPORT: 2.8,
2.9, 3.0, with the connections spread evenly. See src/nsproxy/README.md, "Accepting".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import select
import socket
import ssl
import time

from nsproxy import loop_share
from nsproxy.admission import hold, release
from nsproxy.http.wire import local_response

log = logging.getLogger("nsproxy")

ACCEPT_BATCH = 64  # connections accepted per listener per wake-up (the rest on the next one)
PAUSE_WHEN_OUT_OF_FILES = 0.5  # seconds a listener stops accepting after EMFILE/ENFILE
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two refusal log lines of one tenant
OUT_OF_FILES = 1  # bit of _Listener.paused: after EMFILE/ENFILE (loop_share.SHARE is another)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Accepts on many listening sockets; ``add`` starts one, ``remove`` stops and closes it.

    Nothing is accepted before ``start``: the daemon binds every tenant first (the kernel
    completes handshakes meanwhile), so that the objects of a burst of early connections are
    not interleaved with the tenants' long-lived ones, which would pin the burst's memory.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, admission=None):
        self.loop = loop
        self.admission = admission  # admission.Admission: who may connect (None: anyone)
        self.epoll = select.epoll()
        self.listeners: dict[int, _Listener] = {}  # by the listening socket's fd
        self.accepted = 0  # connections accepted so far (the daemon's sweep watches bursts)
        self.wakeups = 0  # times the loop was woken to accept
        self.empty_wakeups = 0  # ... and found nothing to accept (a peer gone meanwhile)
        # Connections accepted whose protocol has not started yet (a draining worker waits
        # for them too: its exit would reset them).
        self.handing_over = 0
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.loop.add_reader(self.epoll.fileno(), self._ready)

    def add(
        self,
        sock: socket.socket,
        factory,
        ssl_ctx=None,
        handshake_timeout=None,
        client_first: bool = False,
        tenant=None,
    ) -> None:
        """Serve ``sock``. ``client_first``: the protocol's clients always speak first (HTTP,
        TLS). The kernel then keeps a new connection to itself until its first bytes arrive
        (TCP_DEFER_ACCEPT, up to ``handshake_timeout``), and one closed before it sent anything
        is dropped unserved: idle connects, port probes and TCP health checks cost nothing.
        ``tenant``: the runtime whose connections these are; each is admitted (counted against
        the tenant's share) before anything is made for it, and refused otherwise."""
        if client_first:
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, math.ceil(handshake_timeout or 1)
            )
        sock.setblocking(False)
        fd = sock.fileno()
        self.epoll.register(fd, select.EPOLLIN)
        self.listeners[fd] = _Listener(
            self, sock, factory, ssl_ctx, handshake_timeout, client_first, tenant
        )

    def use_ssl_context(self, sock: socket.socket, ssl_ctx) -> None:
        """Give the connections ``sock`` accepts from now on this TLS context."""
        listener = self.listeners.get(sock.fileno())
        if listener is not None and listener.sock is sock:
            listener.ssl_ctx = ssl_ctx

    def remove(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock`` and close it (open connections are not touched)."""
        fd = sock.fileno()
        listener = self.listeners.get(fd)
        if listener is not None and listener.sock is sock:
            del self.listeners[fd]
            if not listener.paused:  # else not registered right now
                self.epoll.unregister(fd)
            listener.gone = True  # a later turn of its tenant must not register the fd again
        sock.close()

    def close(self) -> None:
        for listener in list(self.listeners.values()):
            self.remove(listener.sock)
        if self.started:
            self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def _ready(self) -> None:
        self.wakeups += 1
        before = self.accepted
        for fd, _ in self.epoll.poll(0):
            listener = self.listeners.get(fd)
            if listener is not None and not listener.paused:
                self._accept(listener)
        if self.accepted == before:
            self.empty_wakeups += 1

    def _accept(self, listener: _Listener) -> None:
        """Accept up to ACCEPT_BATCH connections of one listener. Each is charged to its
        tenant's share of the loop (loop_share.py): the accept's own time, and for a TLS
        connection what its handshake will cost (handshake_cost.py), which the loop's TLS
        transport runs out of sight of any callback of the tenant's. A tenant over its share
        while others are served stops accepting here until its turn comes: the kernel's
        backlog holds its clients meanwhile."""
        sock, tenant = listener.sock, listener.tenant
        share = tenant.share if tenant is not None else None
        clock, shares = loop_share.clock, loop_share.SHARES
        for _ in range(ACCEPT_BATCH):
            start = clock()
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Level-triggered: without a pause the loop would spin on this listener.
                    log.error("accept: %s; pausing this listener briefly", exc.strerror)
                    listener.pause_reading_for(OUT_OF_FILES)
                    self.loop.call_later(
                        PAUSE_WHEN_OUT_OF_FILES, listener.resume_reading_for, OUT_OF_FILES
                    )
                    return
                continue  # ECONNABORTED and the like: that client is gone, accept the next
            handshake = self._admit(conn, listener)
            if share is not None:
                shares.charge(share, listener, start, clock(), handshake)
                if listener.paused:
                    return

    def _admit(self, conn: socket.socket, listener: _Listener) -> float:
        """Serve an accepted connection, or close it (a probe, or refused by the admission);
        the seconds its TLS handshake will cost (0 for none)."""
        conn.setblocking(False)
        ssl_ctx, tenant = listener.ssl_ctx, listener.tenant
        if listener.client_first and _closed_before_speaking(conn):
            conn.close()  # a port probe or TCP health check: no transport, no protocol
            return 0.0
        admission = self.admission
        if tenant is not None and admission is not None:
            refused = admission.admit(tenant)
            if refused is not None:
                _refuse(conn, listener.client_first and ssl_ctx is None, tenant, refused)
                return 0.0
        self.accepted += 1
        self.handing_over += 1
        self.loop.create_task(self._serve(conn, listener))
        return _costs(ssl_ctx)[0]

    async def _serve(self, conn, listener: _Listener) -> None:
        factory, ssl_ctx, handshake_timeout, tenant = (
            listener.factory, listener.ssl_ctx, listener.handshake_timeout, listener.tenant
        )  # fmt: skip
        charged = _costs(ssl_ctx)  # what _admit charged (a rotation may come meanwhile)
        made = []

        def counted():
            # The protocol gives the tenant's slot back when its connection is lost.
            protocol = factory()
            protocol.counted = tenant is not None and self.admission is not None
            made.append(protocol)
            return protocol

        try:
            if ssl_ctx is not None and not isinstance(ssl_ctx, ssl.SSLContext):
                try:
                    ssl_ctx = ssl_ctx.get()  # tls.ServerContext: made at the first handshake
                except Exception:  # logged once by tls.ServerContext: nothing can be served
                    conn.close()
                    self._unserved(made, tenant)
                    return
            handshake = None
            try:
                if ssl_ctx is None:
                    await self.loop.connect_accepted_socket(counted, conn)
                else:
                    if tenant is not None:
                        handshake = _Handshake(conn, made)
                        hold(tenant, handshake)
                    transport, _protocol = await self.loop.connect_accepted_socket(
                        counted, conn, ssl=ssl_ctx, ssl_handshake_timeout=handshake_timeout
                    )
                    _credit_resumed(transport, tenant, charged)
            except (OSError, asyncio.TimeoutError) as exc:
                # A failed TLS handshake or a client gone before it was served: the loop has
                # closed the connection; create_server would not report it either.
                log.debug("accepted connection not served: %s", exc)
                self._unserved(made, tenant)
            except Exception:
                conn.close()
                log.exception("accepted connection not served")
                self._unserved(made, tenant)
            finally:
                if handshake is not None:
                    release(tenant, handshake)
        finally:
            self.handing_over -= 1

    def _unserved(self, made: list, tenant) -> None:
        """Give back the slot of a connection whose protocol never started (and so never
        ends: connection_lost only follows connection_made)."""
        if tenant is None or self.admission is None:
            return
        if not made or made[0].counted:
            if made:
                made[0].counted = False
            self.admission.leave(tenant)


_NO_COST = (0.0, 0.0)


def _costs(ssl_ctx) -> tuple[float, float]:
    """(full, resumed) seconds a handshake of a listener with ``ssl_ctx`` costs (a
    tls.ServerContext knows; none for a plain listener, or a plain SSLContext in tests)."""
    return getattr(ssl_ctx, "handshake_cost", _NO_COST)


def _credit_resumed(transport, tenant, charged: tuple[float, float]) -> None:
    """A handshake that resumed a session cost less than the full one charged at its accept
    (``charged``: the costs it was charged by): its tenant gets the difference back."""
    ssl_object = transport.get_extra_info("ssl_object")
    if tenant is None or ssl_object is None or not ssl_object.session_reused:
        return
    full, resumed = charged
    if full > resumed:
        loop_share.SHARES.credit(tenant.share, full - resumed)


class _Listener(loop_share.Pausable):
    """One listening socket the acceptor serves, and why it stops accepting for a while: a
    bit per reason in ``paused`` (:data:`OUT_OF_FILES`, ``loop_share.SHARE``), as a relaying
    protocol's reads; its fd is in the epoll set while no bit is set.
    ``ssl_ctx``: an ssl.SSLContext, or an object whose get() returns one (tls.ServerContext),
    or None."""

    __slots__ = (
        "acceptor",
        "client_first",
        "factory",
        "gone",
        "handshake_timeout",
        "paused",
        "sock",
        "ssl_ctx",
        "tenant",
    )

    def __init__(self, acceptor, sock, factory, ssl_ctx, handshake_timeout, client_first, tenant):
        self.acceptor = acceptor
        self.sock = sock
        self.factory = factory
        self.ssl_ctx = ssl_ctx
        self.handshake_timeout = handshake_timeout
        self.client_first = client_first
        self.tenant = tenant  # worker runtime whose connections these are, or None
        self.paused = 0
        self.gone = False  # removed from the acceptor (its socket closed)

    def _halt(self) -> None:
        if not self.gone:
            self.acceptor.epoll.unregister(self.sock.fileno())

    def _proceed(self) -> None:
        if self.gone:
            return
        try:
            self.acceptor.epoll.register(self.sock.fileno(), select.EPOLLIN)
        except OSError as exc:  # ENOMEM, ENOSPC (max_user_watches): later, not never
            log.error("accept: %s; pausing this listener briefly", exc.strerror)
            self.paused |= OUT_OF_FILES
            self.acceptor.loop.call_later(
                PAUSE_WHEN_OUT_OF_FILES, self.resume_reading_for, OUT_OF_FILES
            )


class _Handshake:
    """A TLS handshake under way, as admission.py sees it: its client has asked nothing yet,
    so closing it loses nothing. A shutdown ends it (the handshake then fails, and the slot is
    given back as for any failed handshake); the loop's transport still owns the socket."""

    __slots__ = ("conn", "ended", "made")

    def __init__(self, conn: socket.socket, made: list):
        self.conn = conn
        self.ended = False
        self.made = made  # the protocol, once made: its transport is set when the handshake is done

    def evictable(self) -> bool:
        return not self.closing()

    def evict(self) -> None:
        self.ended = True
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    def waiting(self) -> bool:
        return False

    def closing(self) -> bool:
        """Ended, or the handshake is done: the connection is then its protocol's to judge
        (it stays registered here until the accepting task resumes, a loop turn later)."""
        return self.ended or bool(self.made and getattr(self.made[0], "transport", None))

    def stalled_for(self) -> float:
        return 0.0

    cut = evict


_REFUSED = local_response(503, "too many connections for this tenant right now")


def _refuse(conn: socket.socket, plain_http: bool, tenant, reason: str) -> None:
    """Close a connection that was not admitted; a plain HTTP client is told why first (best
    effort: one non-blocking send, no waiting). Logged at most every REFUSAL_LOG_INTERVAL
    seconds per tenant, with the count (a flood must not flood the log too)."""
    if plain_http:
        with contextlib.suppress(OSError):
            conn.send(_REFUSED)
    conn.close()
    counters = tenant.metrics
    counters.refused += 1
    now = time.monotonic()
    if now - counters.refusal_logged >= REFUSAL_LOG_INTERVAL:
        log.warning(
            "tenant %s: connection refused: %s (%d refused so far)",
            tenant.name,
            reason,
            counters.refused,
        )
        counters.refusal_logged = now


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
