"""Admission: the process's connection budget, shared fairly between tenants.

Every client connection holds a file descriptor, and usually a second one for its upstream; a
process has ``RLIMIT_NOFILE`` of them. Without a budget, one tenant's clients (or one tenant's
slow upstream) could take them all, and every other tenant's new connections would wait in the
kernel until they time out. The policy (documented in src/nsproxy/README.md, "Fair shares"):

- the budget is ``limits.max_connections``, or by default what the descriptor limit allows: two
  descriptors per connection, after the listening sockets and ``RESERVED_FDS`` for the process's
  own files, at most ``DEFAULT_MAX_CONNECTIONS``;
- below ``PRESSURE`` of the budget, a tenant may hold up to ``limits.max_connections_per_tenant``;
- above it, a tenant may hold only its fair share, the budget divided among the tenants that
  hold connections (the newcomer counted), so a tenant over its share is refused first and a
  tenant under it is still admitted;
- at the budget itself, a tenant under its share is admitted by closing a connection of the
  tenant furthest over its share: one that has asked nothing yet or is truly idle (a TLS
  handshake or a tcp ClientHello under way, an http request head still coming, or between
  requests with every byte the proxy wrote acknowledged by the client), else one whose client
  has moved fewer than :data:`PROGRESS_BYTES` for its exchange in :data:`STALLED_AFTER`
  seconds (taken of a response, given of a request body, either way through a tunnel or a
  tcp relay), else one whose answer has not started (waiting on that tenant's own upstream:
  a long poll, a slow answer), else any other: the last three are cut with a reset. So a
  tenant under its share is admitted whenever another is over its share; the tenant over its
  share pays, the least busy of its connections first. Every connection a tenant holds is
  among the candidates (:func:`hold`): without them, a tenant alone (its share then the whole
  budget) could fill the budget with connections that never get to be idle (answers it never
  reads, bodies it never sends, handshakes it never finishes, requests its own upstream
  answers slowly) and lock every other tenant out.

HAProxy's ``maxconn`` and Envoy's overload manager bound the whole process; this bounds each
tenant by the others' needs too.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import socket
import struct

#: Descriptors kept for the process's own files (logs, admin socket, epoll, channel, metrics).
RESERVED_FDS = 64
#: Default ceiling of the budget: beyond it, memory (tens of kB per connection) is the limit.
DEFAULT_MAX_CONNECTIONS = 65536
#: Share of the budget in use above which fair shares apply.
PRESSURE = 0.9
#: A connection is stalled when its client has moved fewer than PROGRESS_BYTES for its exchange
#: in the last STALLED_AFTER seconds (taken of a response, given of a request body, either way
#: through a tunnel or a tcp relay): under 240 bytes a second, the minimum data rates of
#: ASP.NET Core's Kestrel (MinRequestBodyDataRate, MinResponseDataRate, 240 bytes/s with a
#: 5 s grace period). Only then may it be cut for a tenant under its share.
STALLED_AFTER = 5.0
PROGRESS_BYTES = 240 * 5
#: Connections of the heaviest tenant looked at per eviction: a newcomer at a full budget
#: costs a bounded walk, not one over all of that tenant's connections.
EVICTION_SCAN = 64


def reset(sock) -> None:
    """Make the coming close of ``sock`` (a socket object, or None) a reset (SO_LINGER 0,
    socket(7)): a cut connection's unsent bytes are dropped at once, not kept by the kernel
    for a client that reads nothing."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


_LINGER_ZERO = struct.pack("ii", 1, 0)


def hold(tenant, conn) -> None:
    """Make ``conn`` one of ``tenant``'s connections admission may close for another tenant's
    (an http client, a tcp relay, a TLS handshake under way). ``conn`` answers
    ``evictable()``, ``evict()``, ``closing()``, ``stalled_for()`` (seconds), ``waiting()``
    (its answer has not started) and ``cut()``."""
    if tenant.connections is None:
        tenant.connections = set()
    tenant.connections.add(conn)


def release(tenant, conn) -> None:
    """Undo :func:`hold` (``conn`` ends or no longer needs its slot watched)."""
    if tenant.connections is not None:
        tenant.connections.discard(conn)


class Admission:
    """Counts connections per tenant and decides whether a new one is admitted."""

    __slots__ = ("budget", "busy", "per_tenant", "total")

    def __init__(self) -> None:
        self.budget = DEFAULT_MAX_CONNECTIONS
        self.per_tenant = DEFAULT_MAX_CONNECTIONS
        self.total = 0
        self.busy: set = set()  # tenants holding at least one connection

    def configure(self, limits: dict, fixed: int) -> None:
        """Derive the budget from the limits and the descriptor limit (start and reload):
        two descriptors per connection in what ``fixed`` (the worker's other descriptors,
        ``descriptors.fixed``: every listening socket of every worker, which a worker inherits,
        its upstream socket stock, channels, namespaces, RESERVED_FDS) leaves."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        by_fds = max(16, (soft - fixed) // 2)
        wanted = limits.get("max_connections") or DEFAULT_MAX_CONNECTIONS
        self.budget = min(by_fds, wanted)
        self.per_tenant = limits["max_connections_per_tenant"]

    def share(self, tenant) -> int:
        """The fair share of ``tenant`` under pressure: the budget divided among the tenants
        holding connections, this one counted."""
        holders = len(self.busy) + (tenant not in self.busy)
        return max(1, self.budget // holders)

    def admit(self, tenant) -> str | None:
        """Admit (and count) one more connection of ``tenant``: None, or why not.
        ``tenant.active`` is its count over all workers (the per-tenant cap applies to it),
        ``tenant.local`` its count in this process (the budget and shares are this process's:
        its descriptors)."""
        if tenant.closing:
            return "the tenant is being removed"
        if tenant.active >= self.per_tenant:
            return "max_connections_per_tenant reached"
        if self.total >= self.budget * PRESSURE:
            share = self.share(tenant)
            if tenant.local >= share:
                return f"its fair share ({share}) of the connection budget ({self.budget}) reached"
            if self.total >= self.budget and not self._evict_for(tenant):
                return f"the connection budget ({self.budget}) is full"
        self.enter(tenant)
        return None

    def enter(self, tenant) -> None:
        tenant.active += 1
        self.total += 1
        self.busy.add(tenant)

    def leave(self, tenant) -> None:
        tenant.active -= 1
        self.total -= 1
        if tenant.local <= 0:
            self.busy.discard(tenant)

    def _evict_for(self, tenant) -> bool:
        """Close one connection of the tenant furthest over its share (every tenant has the
        same share, the newcomer counted): a truly idle one, else a stalled one, else any (see
        the module docstring), among the first EVICTION_SCAN; False if that tenant is not over
        its share or holds none here."""
        heaviest = max(self.busy, key=lambda t: t.local, default=None)
        if heaviest is None or heaviest is tenant or heaviest.local <= self.share(tenant):
            return False
        stalled = waiting = other = None
        for conn in itertools.islice(heaviest.connections or (), EVICTION_SCAN):
            if conn.evictable():
                conn.evict()
                return True
            if conn.closing():
                # closed, but a client that takes nothing keeps it open: it still counts
                if stalled is None and conn.stalled_for() >= STALLED_AFTER:
                    stalled = conn
                continue
            if stalled is None and conn.stalled_for() >= STALLED_AFTER:
                stalled = conn
            elif waiting is None and conn.waiting():
                waiting = conn
            elif other is None:
                other = conn
        victim = stalled or waiting or other
        if victim is None:
            return False
        victim.cut()
        return True
