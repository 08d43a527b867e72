"""nsproxy with a memory probe: the benchmark's launcher for the metrics-cost measurement.

    python bench/metrics_probe.py run --config nsproxy.json    # as `nsproxy run --config ...`

Installs a handler for :data:`PROBE_SIGNAL`, then runs nsproxy's own command line in this
process. Workers are forked from the binder (no exec), so each worker inherits the handler.
On the signal a worker walks the metrics objects of its tenants (:func:`walk`) and writes the
result as one line to its stderr (the daemon's log file in the benchmark): :data:`MARK`, then
JSON. Stderr, because a worker runs as ``nobody`` and every other fd it inherits is replaced
(nsproxy/worker/main.py). The binder, which holds no tenant counters, writes
``{"worker": false}``. Nothing else of the daemon changes: the handler
only runs when the benchmark sends the signal, after every RSS reading of that state.

What is counted (``sys.getsizeof`` of each object, each object once per worker, so a constant
shared by every tenant counts once): per tenant that has counters, the ``TenantMetrics`` object
(metrics.py), its lists (status classes, bytes and connections per protocol, latency buckets),
the int and float objects they and its slots hold (ints from -5 to 256 are the interpreter's
shared small ints: counted once), and the ``errors`` dict of each upstream (upstream.py) with
its keys and values. Not counted: the allocator's rounding (pymalloc rounds each block up to
16 bytes), and the upstream runtime itself (servers, pools: made at a tenant's first request,
metrics or not).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

PROBE_SIGNAL = signal.SIGRTMIN + 4  # not used by nsproxy or uvloop
MARK = b"NSPROXY_BENCH_PROBE "


def _worker():
    """The running worker's ``Worker`` object (nsproxy/worker/main.py), found through the task
    that runs ``Worker.serve``; None in the binder."""
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        return None
    for task in tasks:
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_qualname == "Worker.serve" and coro.cr_frame:
            return coro.cr_frame.f_locals.get("self")
    return None


def walk(worker) -> dict:
    """Bytes of the per-tenant metrics objects of one worker, by kind (see the module text)."""
    seen: set[int] = set()
    kinds = {"tenant_metrics": 0, "lists": 0, "numbers": 0, "upstream_errors": 0}

    def count(kind: str, obj) -> None:
        if id(obj) not in seen:
            seen.add(id(obj))
            kinds[kind] += sys.getsizeof(obj)

    tenants = with_counters = with_errors = 0
    for tenant in worker.served.tenants.values():
        tenants += 1
        m = tenant.counters
        if m is not None:
            with_counters += 1
            count("tenant_metrics", m)
            for name in m.__slots__:
                value = getattr(m, name, None)
                if isinstance(value, list):
                    count("lists", value)
                    for item in value:
                        count("numbers", item)
                elif isinstance(value, (int, float)):
                    count("numbers", value)
        errors_here = False
        for up in dict.values(tenant.upstreams):  # the made ones only (no __missing__)
            if up.errors:
                errors_here = True
                count("upstream_errors", up.errors)
                for key, value in up.errors.items():
                    count("upstream_errors", key)
                    count("upstream_errors", value)
        with_errors += errors_here
    return {
        "worker": True,
        "tenants": tenants,
        "tenants_with_counters": with_counters,
        "tenants_with_upstream_errors": with_errors,
        "bytes": sum(kinds.values()),
        "bytes_by_kind": kinds,
    }


def _on_probe(signum, frame) -> None:
    worker = _worker()
    try:
        result = walk(worker) if worker is not None else {"worker": False}
    except Exception as exc:  # reported to the benchmark, which fails the point
        result = {"worker": worker is not None, "error": f"{type(exc).__name__}: {exc}"}
    result["pid"] = os.getpid()
    os.write(2, MARK + json.dumps(result).encode() + b"\n")  # one write: one whole line


def main() -> int:
    signal.signal(PROBE_SIGNAL, _on_probe)
    from nsproxy.cli import main as nsproxy_main

    sys.argv[0] = "nsproxy"
    return nsproxy_main()


if __name__ == "__main__":
    sys.exit(main())
