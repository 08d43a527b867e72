"""Prometheus metrics, in the text exposition format, without a dependency.

Counters live in one small slotted object per tenant, made at the tenant's first count (an idle
tenant has none), so an idle tenant costs nothing here. The hot path only adds to attributes
and list items (http/client.py, tcp relays at their end); everything else is read at scrape
time. Each worker counts its own; the endpoint (host namespace, the configured address) is
served by one worker, which gathers every worker's snapshot (worker/status.py) and the binder's
document through the binder and renders the sums (:func:`merge`, :func:`render`).

The catalogue (names, types, labels, meaning) is docs/metrics.md; the exposition format is
https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4). The renderer
is hand-written because the client library measured 6 kB per tenant against a few hundred bytes
here (src/nsproxy/README.md, memory).
"""

from __future__ import annotations

import bisect
import logging
import platform

log = logging.getLogger("nsproxy.metrics")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROTOCOLS = ("http", "https", "tcp")  # index of received/sent/connections
TCP = 2
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")  # codes[1] .. codes[5]
# Upstream errors by reason (label values of nsproxy_upstream_errors_total).
UPSTREAM_ERRORS = ("connect", "connect_timeout", "closed", "invalid_response",
                   "response_head_timeout", "read_timeout")  # fmt: skip
LISTENER_STATES = ("serving", "waiting", "error")


class TenantMetrics:
    """Counters of one tenant in one worker.

    ``codes[status // 100]`` counts answered requests by status class (index 0 and 6..9:
    statuses outside 100..599, not exported); ``received``, ``sent`` and ``connections`` are
    indexed like :data:`PROTOCOLS`; ``observe`` records an upstream latency in seconds."""

    __slots__ = ("buckets", "codes", "connections", "errors", "latency_sum", "log_window",
                 "received", "refusal_logged", "refused", "requests", "sent",
                 "upstream_failures")  # fmt: skip

    def __init__(self):
        self.requests = 0
        self.errors = 0
        self.upstream_failures = 0
        self.latency_sum = 0.0
        self.buckets = None
        self.codes = [0] * 10
        self.received = [0, 0, 0]
        self.sent = [0, 0, 0]
        self.connections = [0, 0, 0]
        self.refused = 0  # connections not admitted (limits, fair share: accept.py)
        self.refusal_logged = -1e9  # time.monotonic() of the last refusal log line
        self.log_window = None  # traffic_log.py: [start, lines, not shown] of this interval

    def observe(self, seconds: float) -> None:
        buckets = self.buckets
        if buckets is None:
            buckets = self.buckets = [0] * (len(BUCKETS) + 1)
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def snapshot(self) -> list:
        """The counters as a JSON-able list (what :meth:`add` reads)."""
        return [self.requests, self.errors, self.upstream_failures, self.latency_sum,
                self.buckets, self.codes, self.received, self.sent, self.connections,
                self.refused]  # fmt: skip

    def add(self, counters: list) -> None:
        """Add a snapshot (another worker's; fields missing from an older daemon count 0)."""
        counters = list(counters) + [None] * (10 - len(counters))
        requests, errors, failures, latency_sum, buckets, codes, received, sent, conns, refused = (
            counters[:10]
        )
        self.requests += _int(requests)
        self.errors += _int(errors)
        self.upstream_failures += _int(failures)
        self.latency_sum += float(latency_sum or 0)
        if isinstance(buckets, list):
            if self.buckets is None:
                self.buckets = [0] * (len(BUCKETS) + 1)
            for i, count in enumerate(buckets[: len(self.buckets)]):
                self.buckets[i] += _int(count)
        for mine, theirs in ((self.codes, codes), (self.received, received), (self.sent, sent),
                             (self.connections, conns)):  # fmt: skip
            if isinstance(theirs, list):
                for i, count in enumerate(theirs[: len(mine)]):
                    mine[i] += _int(count)
        self.refused += _int(refused)


_NONE_YET = TenantMetrics()  # read by render() for tenants without counters; never written


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return value


def _label(value) -> str:
    """A label value, escaped as the text format wants (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MergedTenant:
    """A tenant summed over workers (what :func:`render` reads): counters, open connections,
    upstream errors by (upstream, reason), servers marked down by (upstream, server)."""

    __slots__ = ("active", "counters", "down", "name", "upstream_errors")

    def __init__(self, name: str):
        self.name = name
        self.counters: TenantMetrics | None = None
        self.active = 0
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.down: set[tuple[str, str]] = set()


def merge(names, snapshots) -> list[MergedTenant]:
    """Sum the tenants' counters, open connections and upstream errors over worker snapshots
    (worker/status.py), for the tenants ``names`` (in that order; others are ignored). A
    server is down when any worker has it marked down."""
    merged = {name: MergedTenant(name) for name in names}
    for snap in snapshots:
        tenants = snap.get("tenants")
        for name, entry in tenants.items() if isinstance(tenants, dict) else ():
            tenant = merged.get(name)
            if tenant is None or not isinstance(entry, dict):
                continue
            tenant.active += _int(entry.get("active"))
            counters = entry.get("counters")
            if isinstance(counters, list) and counters:
                if tenant.counters is None:
                    tenant.counters = TenantMetrics()
                tenant.counters.add(counters)
            errors = entry.get("upstream_errors")
            for upstream, reasons in errors.items() if isinstance(errors, dict) else ():
                for reason, count in reasons.items() if isinstance(reasons, dict) else ():
                    key = (upstream, reason)
                    tenant.upstream_errors[key] = tenant.upstream_errors.get(key, 0) + _int(count)
            upstreams = entry.get("upstreams")
            for upstream, servers in upstreams.items() if isinstance(upstreams, dict) else ():
                for server in servers if isinstance(servers, list) else ():
                    if isinstance(server, dict) and server.get("healthy") is False:
                        tenant.down.add((upstream, str(server.get("address"))))
    return list(merged.values())


def _family(lines: list, name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


def render_tenants(tenants, specs: dict, listeners: list) -> list[str]:
    """The per-tenant families. ``tenants``: MergedTenant (or anything with name, counters,
    active, upstream_errors, down); ``specs``: tenant name -> config.Tenant (its upstreams'
    servers); ``listeners``: [tenant, listen, protocol, state] from the binder."""
    tenants = [(t, _label(t.name), t.counters or _NONE_YET) for t in tenants]
    lines: list[str] = []
    _family(lines, "nsproxy_requests_total", "counter",
            "HTTP requests answered, by tenant and class of the final status.")  # fmt: skip
    for _, name, m in tenants:
        for i, code in enumerate(CLASSES, 1):
            lines.append(f'nsproxy_requests_total{{tenant="{name}",code="{code}"}} {m.codes[i]}')
    _family(lines, "nsproxy_errors_total", "counter",
            "Requests answered with a 4xx/5xx by the proxy or a 5xx by the upstream.")  # fmt: skip
    lines += [f'nsproxy_errors_total{{tenant="{name}"}} {m.errors}' for _, name, m in tenants]
    for family, attr, text in (
        ("nsproxy_received_bytes_total", "received",
         "Bytes from clients (request bodies; every byte for tcp)."),
        ("nsproxy_sent_bytes_total", "sent",
         "Bytes to clients (responses with their heads; every byte for tcp)."),
        ("nsproxy_connections_total", "connections", "Client connections admitted."),
    ):  # fmt: skip
        _family(lines, family, "counter", text)
        for _, name, m in tenants:
            counts = getattr(m, attr)
            for i, protocol in enumerate(PROTOCOLS):
                lines.append(f'{family}{{tenant="{name}",protocol="{protocol}"}} {counts[i]}')
    _family(lines, "nsproxy_refused_connections_total", "counter",
            "Client connections refused (per-tenant cap, fair share, budget full).")  # fmt: skip
    lines += [
        f'nsproxy_refused_connections_total{{tenant="{name}"}} {m.refused}'
        for _, name, m in tenants
    ]
    _family(lines, "nsproxy_active_connections", "gauge", "Open client connections.")
    lines += [f'nsproxy_active_connections{{tenant="{name}"}} {t.active}' for t, name, _ in tenants]
    _family(lines, "nsproxy_upstream_latency_seconds", "histogram",
            "Time from request sent to response head complete.")  # fmt: skip
    for _, name, m in tenants:
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
    _family(lines, "nsproxy_upstream_failures_total", "counter",
            "Upstream connects or responses that failed.")  # fmt: skip
    lines += [
        f'nsproxy_upstream_failures_total{{tenant="{name}"}} {m.upstream_failures}'
        for _, name, m in tenants
    ]
    _family(lines, "nsproxy_upstream_errors_total", "counter",
            "Upstream errors by upstream and reason.")  # fmt: skip
    for t, name, _ in tenants:
        spec = specs.get(t.name)
        for upstream in spec.upstreams if spec is not None else ():
            up = _label(upstream)
            for reason in UPSTREAM_ERRORS:
                count = t.upstream_errors.get((upstream, reason), 0)
                lines.append(
                    f'nsproxy_upstream_errors_total{{tenant="{name}",upstream="{up}",'
                    f'reason="{reason}"}} {count}'
                )
    _family(lines, "nsproxy_upstream_server_up", "gauge",
            "1 when the upstream server is healthy, 0 when it is marked down.")  # fmt: skip
    from nsproxy.upstream import _label as server_label

    for t, name, _ in tenants:
        spec = specs.get(t.name)
        for upstream, up_spec in spec.upstreams.items() if spec is not None else ():
            up = _label(upstream)
            for address in up_spec.servers:
                server = server_label(*address)
                healthy = 0 if (upstream, server) in t.down else 1
                lines.append(
                    f'nsproxy_upstream_server_up{{tenant="{name}",upstream="{up}",'
                    f'server="{_label(server)}"}} {healthy}'
                )
    _family(lines, "nsproxy_listener_state", "gauge",
            "1 for the listener's state (serving, waiting, error), 0 for the others.")  # fmt: skip
    for entry in listeners:
        tenant, listen, protocol, state = (_label(x) for x in entry)
        for one in LISTENER_STATES:
            lines.append(
                f'nsproxy_listener_state{{tenant="{tenant}",listen="{listen}",'
                f'protocol="{protocol}",state="{one}"}} {1 if one == state else 0}'
            )
    return lines


def render_processes(workers: list[dict], binder: dict) -> list[str]:
    """The daemon's families: configuration, build, workers and ``process_*`` (the binder's
    and each worker's own /proc figures, procstat.py)."""
    lines: list[str] = []
    _family(lines, "nsproxy_config_generation", "gauge", "Configuration generation in use.")
    lines.append(f"nsproxy_config_generation {_int(binder.get('generation'))}")
    _family(lines, "nsproxy_config_last_reload_successful", "gauge",
            "1 if the last reload was applied, 0 if it was refused.")  # fmt: skip
    refused = binder.get("reload_refused")
    lines.append(f"nsproxy_config_last_reload_successful {0 if refused else 1}")
    _family(lines, "nsproxy_config_last_reload_success_timestamp_seconds", "gauge",
            "Unix time of the last applied configuration (the start included).")  # fmt: skip
    lines.append(
        "nsproxy_config_last_reload_success_timestamp_seconds "
        f"{_num(binder.get('reload_success_time'))}"
    )
    _family(lines, "nsproxy_build_info", "gauge", "Always 1: the version running.")
    lines.append(
        f'nsproxy_build_info{{version="{_label(binder.get("version") or "")}",'
        f'python="{_label(platform.python_version())}"}} 1'
    )
    _family(lines, "nsproxy_buffered_bytes", "gauge",
            "Bytes held toward slow peers (write buffers, held and pending bytes).")  # fmt: skip
    lines.append(f"nsproxy_buffered_bytes {sum(_int(w.get('buffered')) for w in workers)}")
    _family(lines, "nsproxy_connection_budget", "gauge",
            "Connections the admission budget allows, summed over workers.")  # fmt: skip
    lines.append(f"nsproxy_connection_budget {sum(_int(w.get('budget')) for w in workers)}")
    for family, kind, key, text in (
        ("nsproxy_worker_connections", "gauge", "connections", "Open client connections."),
        ("nsproxy_worker_accepted_total", "counter", "accepted", "Client connections accepted."),
    ):
        _family(lines, family, kind, text + " Per worker.")
        lines += [
            f'{family}{{worker="{_int(w.get("index"))}",pid="{_int(w.get("pid"))}"}} '
            f"{_int(w.get(key))}"
            for w in workers
        ]
    _family(lines, "nsproxy_workers", "gauge", "Worker processes running (serving or draining).")
    lines.append(f"nsproxy_workers {len(workers)}")
    _family(lines, "nsproxy_worker_deaths_total", "counter",
            "Workers that exited unasked (and were replaced).")  # fmt: skip
    lines.append(f"nsproxy_worker_deaths_total {_int(binder.get('worker_deaths'))}")
    _family(lines, "nsproxy_workers_started_total", "counter",
            "Workers started (first start, replacements, upgrades).")  # fmt: skip
    lines.append(f"nsproxy_workers_started_total {_int(binder.get('workers_started'))}")

    # process_*: one series per process; a draining worker whose index a new one took is
    # labelled worker-N-draining (and a third one with that index is left out).
    processes = [("binder", binder.get("process"))]
    seen = {"binder"}
    for w in sorted(workers, key=lambda w: w.get("state") != "serving"):
        label = f"worker-{_int(w.get('index'))}"
        if label in seen:
            label += "-draining"
        if label not in seen:
            seen.add(label)
            processes.append((label, w.get("process")))
    for family, kind, key, text in (
        ("process_cpu_seconds_total", "counter", "cpu", "CPU time (user and system), seconds."),
        ("process_resident_memory_bytes", "gauge", "rss", "Resident memory, bytes."),
        ("process_open_fds", "gauge", "fds", "Open file descriptors."),
        ("process_max_fds", "gauge", "max_fds", "Limit of open file descriptors (soft)."),
        ("process_start_time_seconds", "gauge", "start", "Unix time the process started."),
    ):
        _family(lines, family, kind, text)
        for label, sample in processes:
            if isinstance(sample, dict) and key in sample:
                lines.append(f'{family}{{process="{label}"}} {_num(sample[key])}')
    return lines


def render(tenants, specs: dict, listeners: list, workers: list[dict], binder: dict) -> bytes:
    """The whole exposition text (see :func:`render_tenants` and :func:`render_processes`)."""
    lines = render_tenants(tenants, specs, listeners) + render_processes(workers, binder)
    return ("\n".join(lines) + "\n").encode()
