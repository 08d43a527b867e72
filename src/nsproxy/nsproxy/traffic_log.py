"""Daemon log lines that a tenant's traffic causes, limited per tenant.

Every tenant shares the daemon's log, and its sink limits the rate too: journald keeps 10,000
lines per 30 s of a unit by default (``RateLimitBurst``/``RateLimitIntervalSec``,
journald.conf(5)) and drops the rest, whoever wrote them. One line per refused request let one
tenant's client that loops over connect, send five bad bytes, close, write 15,000 lines
(2.35 MB) in 5 s (a reviewer's run): past the sink's limit, the other tenants' warnings were
lost, and a log file grew as fast. So the lines a tenant's requests cause (refusals, answers
cut short, internal errors) go through :func:`line`: at most :data:`LINES` per tenant in
:data:`INTERVAL` seconds, in each worker; the next one says that the rest is not shown, and
the first after the interval how many were not. The access log keeps a record of every
request; connection refusals have their own limit (``accept.py``).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("nsproxy")

#: Lines of one tenant's traffic a worker writes per :data:`INTERVAL` (seconds).
LINES = 20
INTERVAL = 10.0


def line(tenant, level: int, message: str, *args, **kwargs) -> None:
    """Log ``message % args`` at ``level`` for ``tenant`` (a worker's TenantRuntime: its
    ``metrics.log_window`` holds [start (time.monotonic), lines, not shown]), unless the
    tenant's lines of this interval are used up."""
    counters = tenant.metrics
    window = counters.log_window
    now = time.monotonic()
    if window is None or now - window[0] >= INTERVAL:
        if window is not None and window[2]:
            log.warning("tenant %s: %d more lines of its traffic not shown (limit %d per %g s)",
                        tenant.name, window[2], LINES, INTERVAL)  # fmt: skip
        window = counters.log_window = [now, 0, 0]
    if window[1] >= LINES:
        window[2] += 1
        return
    window[1] += 1
    log.log(level, message, *args, **kwargs)
    if window[1] == LINES:
        log.warning("tenant %s: %d lines of its traffic in %g s; more are not shown until "
                    "%g s have passed (the access log has every request)",
                    tenant.name, LINES, now - window[0], INTERVAL)  # fmt: skip
