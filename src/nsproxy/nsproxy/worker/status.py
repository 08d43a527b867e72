"""A worker's snapshot: what the binder's status and the metrics endpoint sum over workers.

One JSON object: the worker (pid, index, generation, state, open connections, connections
accepted, sockets in stock) and, for each tenant that has anything to say (counters made,
connections open, upstreams used), its counters, open connections and upstream health.
Tenants without any are left out: the reader treats them as zeros and healthy.
"""

from __future__ import annotations

import os

from nsproxy.worker.apply import Served


def snapshot(served: Served, index: int, state: str) -> dict:
    tenants = {}
    for tenant in [*served.tenants.values(), *(t for t, _ in served.draining_tenants)]:
        entry = {}
        counters = tenant.counters
        if counters is not None:
            entry["counters"] = [
                counters.requests,
                counters.errors,
                counters.upstream_failures,
                counters.latency_sum,
                counters.buckets,
            ]
        if tenant.local:
            entry["active"] = tenant.local
        if tenant.upstreams:
            entry["upstreams"] = {name: up.health() for name, up in tenant.upstreams.items()}
        if entry and tenant.name not in tenants:
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
        "tenants": tenants,
    }
