"""Prometheus metrics per tenant, in the text exposition format, without a dependency.

Counters live in one small slotted object per tenant (the histogram buckets are allocated at
the first request), so an idle tenant costs a few hundred bytes. Each worker counts its own;
the endpoint (host namespace, the configured address) is served by one worker, which gathers
every worker's snapshot through the binder and renders the sums (:func:`merge`), plus a few
lines per worker and the binder's own counters.
"""

from __future__ import annotations

import asyncio
import bisect
import logging

import httptools

log = logging.getLogger("nsproxy.metrics")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class TenantMetrics:
    """Counters of one tenant; ``observe`` records an upstream latency in seconds."""

    __slots__ = (
        "buckets",
        "errors",
        "latency_sum",
        "refusal_logged",
        "refused",
        "requests",
        "upstream_failures",
    )

    def __init__(self):
        self.refused = 0  # connections not admitted (limits, fair share)
        self.refusal_logged = -1e9  # time.monotonic() of the last refusal log line
        self.requests = 0
        self.errors = 0
        self.upstream_failures = 0
        self.latency_sum = 0.0
        self.buckets = None

    def observe(self, seconds: float) -> None:
        buckets = self.buckets
        if buckets is None:
            buckets = self.buckets = [0] * (len(BUCKETS) + 1)
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds


_NONE_YET = TenantMetrics()  # read by render() for tenants without counters; never written


def _counters(tenant) -> TenantMetrics:
    """The tenant's counters, without making them for a tenant that has not counted yet."""
    counters = tenant.counters
    return _NONE_YET if counters is None else counters


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MergedTenant:
    """A tenant's counters summed over workers (what :func:`render` reads)."""

    __slots__ = ("active", "counters", "name")

    def __init__(self, name: str):
        self.name = name
        self.counters: TenantMetrics | None = None
        self.active = 0


def merge(names, snapshots) -> list[MergedTenant]:
    """Sum the tenants' counters and open connections over worker snapshots
    (worker/status.py), for the tenants ``names`` (in that order; others are ignored)."""
    merged = {name: MergedTenant(name) for name in names}
    for snap in snapshots:
        for name, entry in (snap.get("tenants") or {}).items():
            tenant = merged.get(name)
            if tenant is None or not isinstance(entry, dict):
                continue
            tenant.active += int(entry.get("active") or 0)
            counters = entry.get("counters")
            if counters:
                m = tenant.counters
                if m is None:
                    m = tenant.counters = TenantMetrics()
                requests, errors, failures, latency_sum, buckets = counters
                m.requests += int(requests)
                m.errors += int(errors)
                m.upstream_failures += int(failures)
                m.latency_sum += float(latency_sum)
                if buckets:
                    if m.buckets is None:
                        m.buckets = [0] * (len(BUCKETS) + 1)
                    for i, count in enumerate(buckets[: len(m.buckets)]):
                        m.buckets[i] += int(count)
    return list(merged.values())


def render_processes(workers: list[dict], binder: dict) -> list[str]:
    """Lines about the processes: per worker (open and accepted connections) and the
    binder's counters (workers started, worker deaths)."""
    lines = [
        "# HELP nsproxy_worker_connections Open client connections, per worker.",
        "# TYPE nsproxy_worker_connections gauge",
    ]
    lines += [
        f'nsproxy_worker_connections{{worker="{w.get("index")}",pid="{w.get("pid")}"}} '
        f"{int(w.get('connections') or 0)}"
        for w in workers
    ]
    lines += [
        "# HELP nsproxy_worker_accepted_total Client connections accepted, per worker.",
        "# TYPE nsproxy_worker_accepted_total counter",
    ]
    lines += [
        f'nsproxy_worker_accepted_total{{worker="{w.get("index")}",pid="{w.get("pid")}"}} '
        f"{int(w.get('accepted') or 0)}"
        for w in workers
    ]
    lines += [
        "# HELP nsproxy_workers Worker processes running (serving or draining).",
        "# TYPE nsproxy_workers gauge",
        f"nsproxy_workers {len(workers)}",
        "# HELP nsproxy_worker_deaths_total Workers that exited unasked (and were replaced).",
        "# TYPE nsproxy_worker_deaths_total counter",
        f"nsproxy_worker_deaths_total {int(binder.get('worker_deaths') or 0)}",
        "# HELP nsproxy_workers_started_total Workers started (first start, replacements, "
        "upgrades).",
        "# TYPE nsproxy_workers_started_total counter",
        f"nsproxy_workers_started_total {int(binder.get('workers_started') or 0)}",
    ]
    return lines


def render(tenants, processes: list[str] | None = None) -> bytes:
    """The exposition text for an iterable of tenants (name, counters, active), followed by
    the ``processes`` lines (:func:`render_processes`)."""
    tenants = [(t, _counters(t)) for t in tenants]
    lines = [
        "# HELP nsproxy_requests_total HTTP requests answered, per tenant.",
        "# TYPE nsproxy_requests_total counter",
    ]
    lines += [
        f'nsproxy_requests_total{{tenant="{_label(t.name)}"}} {m.requests}' for t, m in tenants
    ]
    lines += [
        "# HELP nsproxy_errors_total Requests answered with a 4xx/5xx by the proxy or a 5xx "
        "by the upstream, per tenant.",
        "# TYPE nsproxy_errors_total counter",
    ]
    lines += [f'nsproxy_errors_total{{tenant="{_label(t.name)}"}} {m.errors}' for t, m in tenants]
    lines += [
        "# HELP nsproxy_upstream_failures_total Upstream connects or responses that failed.",
        "# TYPE nsproxy_upstream_failures_total counter",
    ]
    lines += [
        f'nsproxy_upstream_failures_total{{tenant="{_label(t.name)}"}} {m.upstream_failures}'
        for t, m in tenants
    ]
    lines += [
        "# HELP nsproxy_active_connections Open client connections, per tenant.",
        "# TYPE nsproxy_active_connections gauge",
    ]
    lines += [
        f'nsproxy_active_connections{{tenant="{_label(t.name)}"}} {t.active}' for t, _ in tenants
    ]
    lines += [
        "# HELP nsproxy_upstream_latency_seconds Time from request sent to response head.",
        "# TYPE nsproxy_upstream_latency_seconds histogram",
    ]
    for t, m in tenants:
        name = _label(t.name)
        counts = m.buckets or [0] * (len(BUCKETS) + 1)
        total = 0
        for bound, count in zip(BUCKETS, counts):
            total += count
            lines.append(
                f'nsproxy_upstream_latency_seconds_bucket{{tenant="{name}",le="{bound}"}} {total}'
            )
        total += counts[-1]
        lines.append(
            f'nsproxy_upstream_latency_seconds_bucket{{tenant="{name}",le="+Inf"}} {total}'
        )
        lines.append(f'nsproxy_upstream_latency_seconds_sum{{tenant="{name}"}} {m.latency_sum}')
        lines.append(f'nsproxy_upstream_latency_seconds_count{{tenant="{name}"}} {total}')
    lines += processes or []
    return ("\n".join(lines) + "\n").encode()


MAX_REQUEST_BYTES = 8192  # a scrape request is a few hundred bytes


class MetricsProtocol(asyncio.Protocol):
    """Answers GET /metrics (anything else: 404) on the metrics address. ``scrape`` is a
    coroutine function returning the exposition text (bytes); one request at a time."""

    def __init__(self, scrape):
        self.scrape = scrape
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.busy = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        if self.received > MAX_REQUEST_BYTES and not self.busy:
            self._send(431, b"request too large\n", close=True)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"bad request\n", close=True)

    def on_url(self, url):
        self.url += url[:1024]

    def on_message_complete(self):
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        self.received = 0
        close = not self.parser.should_keep_alive()
        if path == b"/metrics":
            self.busy = True
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._answer(close))
        else:
            self._send(404, b"only /metrics is served here\n", close=close)

    async def _answer(self, close):
        try:
            body = await self.scrape()
        except Exception:
            log.exception("metrics scrape failed")
            self._send(503, b"metrics are not available right now\n", close=True)
            return
        finally:
            self.busy = False
        if not self.transport.is_closing():
            self._send(200, body, close=close)
            if not close:
                self.transport.resume_reading()

    def _send(self, status, body, close):
        reason = {200: b"OK", 404: b"Not Found", 431: b"Request Header Fields Too Large",
                  503: b"Service Unavailable"}.get(status, b"Bad Request")  # fmt: skip
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%b\r\n%b"
            % (status, reason, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        if close:
            self.transport.close()
