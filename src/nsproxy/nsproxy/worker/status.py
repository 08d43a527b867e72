"""A worker's snapshot: what the binder's status and the metrics endpoint sum over workers.

One JSON object: the worker (pid, index, generation, state, open connections, connections
accepted, sockets in stock, bytes buffered toward slow peers, its admission budget, its own
``process_*`` figures)
and, for each tenant that has anything to say (counters made, connections open, upstreams
used, or checked by active health checks), its counters, open connections, upstream health and
upstream errors by reason. Tenants without any are left out: the reader treats them as zeros and
healthy.

Made when asked (a scrape, a status): the open tcp relays' bytes and count are added to the
tenant's counters here, so that a long relay shows its traffic before it ends.
"""

from __future__ import annotations

import os

from nsproxy import metrics, procstat
from nsproxy.worker.apply import Served


def snapshot(served: Served, index: int, state: str) -> dict:
    tenants = {}
    for tenant in [*served.tenants.values(), *(t for t, _ in served.draining_tenants)]:
        if tenant.name in tenants:
            continue
        entry = {}
        counters = _with_open_relays(tenant)
        if counters is not None:
            entry["counters"] = counters
        if tenant.local:  # every protocol: the acceptor admits (and counts) them all
            entry["active"] = tenant.local
        names = list(tenant.upstreams)
        if served.shared.health is not None:  # what the checks found, used here or not
            names += [n for n, spec in tenant.spec.upstreams.items()
                      if spec.health_check is not None and n not in tenant.upstreams]  # fmt: skip
        if names:
            entry["upstreams"] = {name: tenant.upstreams.health(name) for name in names}
            errors = {name: up.errors for name, up in tenant.upstreams.items() if up.errors}
            if errors:
                entry["upstream_errors"] = errors
        if entry:
            tenants[tenant.name] = entry
    shared = served.shared
    return {
        "pid": os.getpid(),
        "index": index,
        "generation": served.generation,
        "state": state,
        "connections": served.open_connections(),
        "accepted": shared.acceptor.accepted,
        "accept_wakeups": shared.acceptor.wakeups,
        "accept_wakeups_empty": shared.acceptor.empty_wakeups,
        "stock": shared.sockets.count(),
        "buffered": buffered_bytes(served),
        "budget": shared.admission.budget,
        "process": procstat.sample(),
        "tenants": tenants,
    }


def _relays(tenant):
    for li in tenant.listeners:
        if li.factory is not None:
            yield from li.factory.connections


def _with_open_relays(tenant) -> list | None:
    """The tenant's counters as a list, the open tcp relays' bytes and count added."""
    counters = tenant.counters
    relays = list(_relays(tenant))
    if counters is None and not relays:
        return None
    out = (counters or metrics.TenantMetrics()).snapshot()
    if relays:
        tcp = metrics.TCP
        out = list(out)
        received, sent, connections = (list(x) for x in out[6:9])
        received[tcp] += sum(r.bytes_in for r in relays)
        sent[tcp] += sum(r.bytes_out for r in relays)
        connections[tcp] += len(relays)
        out[6:9] = received, sent, connections
    return out


def buffered_bytes(served: Served) -> int:
    """Bytes this worker holds toward slow peers: what the transports of the open client
    connections (and their upstream connections) still have to write, plus the bytes held or
    pending in the connections themselves."""
    total = 0
    for conn in served.shared.connections:
        total += _write_buffer(getattr(conn, "transport", None))
        up = getattr(conn, "up", None)
        if up is not None:
            total += _write_buffer(getattr(up, "transport", None))
        held = getattr(conn, "held", None)
        if held:
            total += len(held)
        for piece in getattr(conn, "pending", None) or ():
            total += len(piece)
    for tenant in served.tenants.values():
        for relay in _relays(tenant):
            total += _write_buffer(relay.client) + _write_buffer(relay.upstream)
            total += len(relay.pending or b"")
    return total


def _write_buffer(transport) -> int:
    if transport is None:
        return 0
    try:
        return transport.get_write_buffer_size()
    except Exception:  # a closed transport
        return 0
