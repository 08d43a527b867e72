"""What a worker serves: tenants, their listeners, and what every connection reads.

The attributes named here are the interface of the traffic path (http.py, tcp.py,
upstream.py): a connection reads ``tenant.name/router/upstreams/counters/metrics/active/
closing`` and ``shared.loop/loop_time/now/limits/timeouts/access_log/connections/acceptor/
draining``; upstreams read ``shared.sockets`` (the socket stock) and ``shared.health`` (the
active health checks' table).
"""

from __future__ import annotations

import re
import time

from nsproxy import accesslog, config, loop_share, metrics
from nsproxy.accept import Acceptor
from nsproxy.admission import Admission
from nsproxy.http import ClientConnection, Router
from nsproxy.upstream import Upstreams

_HEADER_SAFE = re.compile(rb"[A-Za-z0-9._-]{1,63}")


class Shared:
    """What every connection of this worker reads: limits, timeouts, the coarse clock (set by
    the sweep), the access log, the open connections, the acceptor, the socket stock and the
    health table."""

    def __init__(self, loop, cfg: config.Config, sockets, counts=None, health=None):
        self.loop = loop
        self.loop_time = time.monotonic  # uvloop's loop.time() only has millisecond steps
        self.now = loop.time()
        self.limits = cfg.limits
        self.timeouts = cfg.timeouts
        self.access_log: accesslog.AccessLog | None = None
        self.connections: set = set()
        self.admission = Admission()  # this worker's connection budget and fair shares
        self.acceptor = Acceptor(loop, self.admission)
        self.sockets = sockets  # worker.stock.SocketStock: sockets inside tenant namespaces
        self.counts = counts  # sharedcounts.SharedCounts: connections per tenant, all workers
        self.health = health  # health_table.HealthTable: what worker 0's checks found
        self.draining = False


class ListenerRuntime:
    """One listener as served; for http/https it is also the protocol factory (saves memory).

    ``server`` is this worker's copy of the listening socket the binder made (None while the
    binder has none bound); ``sid`` the binder's id for it."""

    __slots__ = (
        "cert_state",
        "factory",
        "scheme",
        "server",
        "shared",
        "sid",
        "spec",
        "ssl_ctx",
        "tenant",
    )

    def __init__(self, spec: config.Listener, tenant, shared):
        self.spec = spec
        self.tenant = tenant
        self.shared = shared
        self.scheme = b"https" if spec.protocol == "https" else b"http"
        self.server = None
        self.sid = None
        self.factory = None  # tcp.RelayFactory, for draining its relays
        self.ssl_ctx = None  # https: its tls.ServerContext (rotated in place when files change)
        self.cert_state = None

    def __call__(self) -> ClientConnection:
        return ClientConnection(self.tenant, self.spec.listen, self.scheme, self.shared)

    def close(self) -> None:
        """Stop accepting here and close this worker's copy of the socket."""
        if self.server is not None:
            self.shared.acceptor.remove(self.server)
            self.server = None
            self.sid = None


class TenantRuntime:
    """A tenant as a worker serves it: listeners, router, upstream pools and counters.

    ``active`` is the tenant's open connections in ALL workers (what its limit applies to):
    reading it sums the shared table (sharedcounts.py), ``active += 1`` / ``-= 1`` change this
    worker's own count by exactly one. ``local`` is this worker's count."""

    __slots__ = (
        "admission",
        "closing",
        "connections",
        "counters",
        "counts",
        "listeners",
        "local",
        "name",
        "others",
        "router",
        "shares",
        "slot",
        "spec",
        "upstreams",
    )

    def __init__(
        self,
        spec: config.Tenant,
        router: Router,
        upstreams: Upstreams,
        admission: Admission,
        counts=None,
        slot=-1,
    ):
        self.spec = spec
        self.admission = admission  # the worker's Admission (connection budget and shares)
        self.connections = None  # this worker's open http connections, a set from the first
        self.name = spec.name
        self.listeners: tuple[ListenerRuntime, ...] = ()  # a tuple: smaller than a list
        self.router = router
        self.upstreams = upstreams
        upstreams.use_specs(spec.upstreams)
        self.counters: metrics.TenantMetrics | None = None  # made by the first count
        self.shares: loop_share.TenantShare | None = None  # made by the first read
        self.local = 0
        self.others = 0  # the other workers' count, as last read by ``active``
        # No shared count without a slot or a row: then this worker's count is the count.
        self.counts = counts if counts is not None and slot >= 0 and counts.row >= 0 else None
        self.slot = slot
        self.closing = False

    @property
    def header_value(self) -> bytes:
        """The tenant name as sent in ``X-Nsproxy-Tenant`` (checked once more here: a name
        that could end the field or the head must never reach a request)."""
        value = self.name.encode("ascii")
        if not _HEADER_SAFE.fullmatch(value):
            raise ValueError(f"tenant name {self.name!r} cannot be sent in a header")
        return value

    @property
    def active(self) -> int:
        counts = self.counts
        if counts is None:
            return self.local
        self.others = counts.others(self.slot)
        return self.local + self.others

    @active.setter
    def active(self, value: int) -> None:
        # ``tenant.active += n`` reads (sum, with the others' count) and then writes: the
        # difference is this worker's own change, whatever the others did meanwhile.
        self.local = value - self.others
        if self.counts is not None:
            self.counts.set_own(self.slot, self.local)

    @property
    def metrics(self) -> metrics.TenantMetrics:
        """The tenant's counters, made at the first use (an idle tenant has none)."""
        counters = self.counters
        if counters is None:
            counters = self.counters = metrics.TenantMetrics()
        return counters

    @property
    def share(self) -> loop_share.TenantShare:
        """The tenant's account of its share of this worker's loop, made at the first read."""
        share = self.shares
        if share is None:
            share = self.shares = loop_share.TenantShare()
        return share

    def discard(self) -> None:
        """The tenant is gone for good: drop the references between its objects (the tenant
        and its listeners point at each other), so that reference counting frees them; the
        collector never looks at frozen objects (heap.settle)."""
        for li in self.listeners:
            li.tenant = None
            li.factory = None
        self.listeners = ()
        self.upstreams.clear()

    def listener(self, digest: bytes) -> ListenerRuntime | None:
        for li in self.listeners:
            if li.spec.digest == digest:
                return li
        return None
