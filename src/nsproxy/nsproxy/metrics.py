"""Prometheus metrics per tenant, in the text exposition format, without a dependency.

Counters live in one small slotted object per tenant (the histogram buckets are allocated at
the first request), so an idle tenant costs a few hundred bytes. The endpoint is served in the
host namespace on the configured address.
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


def render(tenants) -> bytes:
    """The exposition text for an iterable of tenant runtimes (name, counters, active)."""
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
    return ("\n".join(lines) + "\n").encode()


class MetricsProtocol(asyncio.Protocol):
    """Answers GET /metrics (anything else: 404) on the metrics address."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"bad request\n", close=True)

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        if path == b"/metrics":
            self._send(
                200, render(self.daemon.tenants.values()), close=not self.parser.should_keep_alive()
            )
        else:
            self._send(
                404, b"only /metrics is served here\n", close=not self.parser.should_keep_alive()
            )

    def _send(self, status, body, close):
        reason = b"OK" if status == 200 else (b"Not Found" if status == 404 else b"Bad Request")
        self.transport.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%b\r\n%b"
            % (status, reason, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        if close:
            self.transport.close()
