"""A worker's one-second sweep: one small job per function, run in this order by :func:`tick`.

Timeouts are enforced here rather than by a timer per connection: the coarse clock
(``shared.now``) is set once a second and every open connection is checked against it.
"""

from __future__ import annotations

import logging
import time

from nsproxy.worker.apply import Served

log = logging.getLogger("nsproxy")

#: Seconds between two passes of :func:`drop_tls`: a TLS context no handshake used for one
#: to two of them is forgotten (made again, 1.5 to 2 ms of CPU, at its next handshake).
TLS_IDLE_PASS = 300.0


def tick(served: Served, tidier, now: float, timeouts=None) -> None:
    """One sweep. ``timeouts`` overrides the config's (a draining worker shortens idle)."""
    served.shared.now = now
    jobs = (check_timeouts, expire_pools, finish_removed_tenants, flush_access_log, drop_tls)
    for job in jobs:
        try:
            job(served, now, timeouts or served.shared.timeouts)
        except Exception:
            log.exception("internal error in the sweep (%s)", job.__name__)
    served.shared.sockets.expire(now)
    tidier.tick(now, served.shared.acceptor.accepted, len(served.shared.connections))


def check_timeouts(served: Served, now: float, timeouts) -> None:
    """Close connections past their state's timeout (header_read, read, idle)."""
    for conn in list(served.shared.connections):
        try:
            conn.check_timeout(now, timeouts)
        except Exception:  # one broken connection must not stop the sweep
            log.exception(
                "tenant %s: closing a connection after an internal error", conn.tenant.name
            )
            conn.abort()


def expire_pools(served: Served, now: float, timeouts) -> None:
    """Close pooled upstream connections idle longer than timeouts.idle."""
    idle = timeouts["idle"]
    for tenant in served.tenants.values():
        for up in tenant.upstreams.values():
            up.expire_idle(now, idle)


def finish_removed_tenants(served: Served, now: float, timeouts) -> None:
    """Removed tenants whose connections are done, or whose drain time is up, are closed."""
    if not served.draining_tenants:
        return
    mono = time.monotonic()
    still = []
    for tenant, deadline in served.draining_tenants:
        if tenant.local and mono < deadline:
            still.append((tenant, deadline))
            continue
        for conn in list(served.shared.connections):
            if conn.tenant is tenant:
                conn.abort()
        for li in tenant.listeners:
            if li.factory is not None:
                li.factory.abort_all()
        for up in tenant.upstreams.values():
            up.close()
        tenant.discard()
    served.draining_tenants = still


def flush_access_log(served: Served, now: float, timeouts) -> None:
    access = served.shared.access_log
    if access is not None:
        access.flush()


def drop_tls(served: Served, now: float, timeouts) -> None:
    """Forget the TLS contexts of listeners without a handshake for TLS_IDLE_PASS seconds."""
    if now < served.next_tls_sweep:
        return
    first = served.next_tls_sweep == 0.0
    served.next_tls_sweep = now + TLS_IDLE_PASS
    if not first:
        dropped = served.drop_idle_contexts()
        if dropped:
            log.debug("%d idle TLS contexts dropped", dropped)
