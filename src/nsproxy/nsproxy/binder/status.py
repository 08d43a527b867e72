"""The status document (``nsproxy status --json``): the whole daemon, from the binder.

Listener states come from the binder (it binds); counters, open connections and upstream
health from the workers' snapshots (worker/status.py), gathered over their channels and summed:
a server is shown healthy unless a worker has it marked down. A ``workers`` list gives the
per-worker detail, ``binder`` the binder's own counters.
"""

from __future__ import annotations

import json
import logging
import os

from nsproxy import channel

log = logging.getLogger("nsproxy")

SNAPSHOT_TIMEOUT = 2.0  # seconds a worker has to answer
# Per-worker detail in the status: accept wake-ups (and the empty ones: another worker took
# the connection) show how well accepts are spread.
WORKER_FIELDS = ("pid", "index", "state", "generation", "connections", "accepted",
                 "accept_wakeups", "accept_wakeups_empty", "stock")  # fmt: skip
MAX_SNAPSHOT = 16 * 1024 * 1024  # bytes


async def worker_snapshots(binder) -> list[dict]:
    """Every worker's snapshot that came in time, parsed (bounded: size, then JSON)."""
    out = []
    for handle, fd in await binder.pool.snapshots(SNAPSHOT_TIMEOUT):
        try:
            snap = json.loads(channel.read_sealed(fd, MAX_SNAPSHOT))
        except (channel.ChannelError, ValueError, RecursionError) as exc:
            log.warning("worker %d sent an unreadable snapshot: %s", handle.index, exc)
            continue
        finally:
            os.close(fd)
        if isinstance(snap, dict):
            snap["state"] = handle.state
            out.append(snap)
    return out


async def document(binder) -> dict:
    snapshots = await worker_snapshots(binder)
    per_tenant: dict[str, list[dict]] = {}
    for snap in snapshots:
        tenants = snap.get("tenants")
        for name, entry in tenants.items() if isinstance(tenants, dict) else ():
            if isinstance(entry, dict):
                per_tenant.setdefault(name, []).append(entry)
    tenants = []
    for name, binding in binder.listeners.tenants.items():
        spec = binding.spec
        entries = per_tenant.get(name, [])
        tenant = {"name": name, "netns": spec.netns}
        tenant.update(binder.listeners.status(binding))
        tenant["upstreams"] = [
            {"name": up_name, "servers": _health(up, up_name, entries)}
            for up_name, up in spec.upstreams.items()
        ]
        tenant["active"] = sum(_int(e.get("active")) for e in entries)
        tenant["last_error"] = tenant.pop("last_error")
        tenants.append(tenant)
    workers = [{key: snap.get(key) for key in WORKER_FIELDS} for snap in snapshots]
    workers.sort(key=lambda w: (w["state"] != "serving", _int(w["index"])))
    return {
        "instance": binder.config.instance,
        "pid": os.getpid(),
        "generation": binder.generation,
        "config_digest": binder.config.digest,
        "last_reload_error": binder.last_reload_error,
        "workers": workers,
        "binder": {**binder.counters(), "user": str(binder.credentials)},
        "tenants": tenants,
    }


def _health(up, name: str, entries: list[dict]) -> list[dict]:
    from nsproxy.upstream import _label

    down: dict[str, str | None] = {}  # address -> the error a worker marked it down with
    for entry in entries:
        servers = (entry.get("upstreams") or {}).get(name) or []
        for server in servers if isinstance(servers, list) else ():
            if isinstance(server, dict) and server.get("healthy") is False:
                error = server.get("last_error")
                error = error[:500] if isinstance(error, str) else None
                down[server.get("address")] = down.get(server.get("address")) or error
    labels = [_label(*address) for address in up.servers]
    return [
        {"address": label, "healthy": label not in down, "last_error": down.get(label)}
        for label in labels
    ]


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
