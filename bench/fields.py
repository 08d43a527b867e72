"""The figures of a benchmark point: their names, which phase produces them, labels and units.

A proxy is started twice per repetition: with an HTTP listener per tenant (fields without a
prefix) and with an HTTP and an HTTPS listener per tenant (``tls_`` prefix). At a tenant count
in ``--load-tenants`` each start is followed by a load run, for TLS by the handshake runs, and by
a tenant add; at the others only start and memory are measured. The direct path has only loads.
"""

from __future__ import annotations

CONFIG_PREFIXES = ("", "tls_")

# measured at every tenant count, once per listener configuration
START = ["listen_all_s", "listen_cpu_s", "idle_rss_kb", "idle_pss_kb", "processes"]
START_FIELDS = [f"{p}{f}" for p in CONFIG_PREFIXES for f in START]

# one wrk run: "http" in the first configuration, "https" in the second
LOAD = [
    "rps",
    "p50_ms",
    "p99_ms",
    "failed",
    "load_cpu_share",  # wrk + backend CPU-s / wall s: what the load side needed
]
PROXY_LOAD = [
    "proxy_cpu_s",
    "proxy_cpu_share",
    "req_per_cpu_s",
    "req_per_busiest_cpu_s",
]
LOAD_FIELDS = [f"{v}_{f}" for v in ("http", "https") for f in LOAD]

ADD = ["add_tenant_ms", "add_failed_requests", "add_requests", "add_loop_requests"]
HANDSHAKE = ["count", "per_s", "per_cpu_s", "proxy_cpu_share", "resumed", "errors"]
HANDSHAKE_FIELDS = [f"hs_{m}_{f}" for m in ("full", "resumed") for f in HANDSHAKE]

PROXY_LOAD_FIELDS = [
    *LOAD_FIELDS,
    *(f"{v}_{f}" for v in ("http", "https") for f in PROXY_LOAD),
    "load_rss_kb",
    "tls_load_rss_kb",
    *(f"{p}{f}" for p in CONFIG_PREFIXES for f in ADD),
    *HANDSHAKE_FIELDS,
]


def fields_for(is_proxy: bool, with_load: bool) -> list[str]:
    """The numeric fields a point of this kind has in every sample."""
    if not is_proxy:
        return list(LOAD_FIELDS)
    return START_FIELDS + (PROXY_LOAD_FIELDS if with_load else [])


# label and unit of every field the tables show, in table order
LABELS = {
    "listen_all_s": ("HTTP: all listeners accept", "s"),
    "listen_cpu_s": ("HTTP: CPU used to start", "s"),
    "idle_rss_kb": ("HTTP: idle RSS (sum)", "MiB"),
    "idle_pss_kb": ("HTTP: idle PSS (sum)", "MiB"),
    "processes": ("HTTP: processes", ""),
    "tls_listen_all_s": ("+TLS: all listeners accept", "s"),
    "tls_listen_cpu_s": ("+TLS: CPU used to start", "s"),
    "tls_idle_rss_kb": ("+TLS: idle RSS (sum)", "MiB"),
    "tls_idle_pss_kb": ("+TLS: idle PSS (sum)", "MiB"),
    "tls_processes": ("+TLS: processes", ""),
    "http_rps": ("HTTP req/s", ""),
    "http_req_per_cpu_s": ("HTTP req/proxy-CPU-s", ""),
    "http_req_per_busiest_cpu_s": ("HTTP req/busiest-thread-CPU-s", ""),
    "http_proxy_cpu_share": ("HTTP proxy CPU share", ""),
    "http_load_cpu_share": ("HTTP wrk+backend CPU share", ""),
    "http_p50_ms": ("HTTP p50", "ms"),
    "http_p99_ms": ("HTTP p99", "ms"),
    "http_failed": ("HTTP failed req", ""),
    "load_rss_kb": ("HTTP: RSS under load", "MiB"),
    "https_rps": ("TLS req/s", ""),
    "https_req_per_cpu_s": ("TLS req/proxy-CPU-s", ""),
    "https_req_per_busiest_cpu_s": ("TLS req/busiest-thread-CPU-s", ""),
    "https_proxy_cpu_share": ("TLS proxy CPU share", ""),
    "https_load_cpu_share": ("TLS wrk+backend CPU share", ""),
    "https_p50_ms": ("TLS p50", "ms"),
    "https_p99_ms": ("TLS p99", "ms"),
    "https_failed": ("TLS failed req", ""),
    "tls_load_rss_kb": ("+TLS: RSS under TLS load", "MiB"),
    "hs_full_per_cpu_s": ("full handshakes/proxy-CPU-s", ""),
    "hs_full_per_s": ("full handshakes/s", ""),
    "hs_full_proxy_cpu_share": ("full hs: proxy CPU share", ""),
    "hs_full_errors": ("full hs: clients failed", ""),
    "hs_resumed_per_cpu_s": ("resumed hs+req/proxy-CPU-s", ""),
    "hs_resumed_per_s": ("resumed hs+req/s", ""),
    "hs_resumed_resumed": ("resumed hs: really resumed", ""),
    "hs_resumed_count": ("resumed hs: connections", ""),
    "hs_resumed_errors": ("resumed hs: clients failed", ""),
    "add_tenant_ms": ("HTTP: add one tenant", "ms"),
    "add_failed_requests": ("HTTP: failed req in add", ""),
    "tls_add_tenant_ms": ("+TLS: add tenant + own cert", "ms"),
    "tls_add_failed_requests": ("+TLS: failed req in add", ""),
}

# The metrics-cost measurement (bench/metrics_cost.py): nsproxy only, per variant and N.
# Every figure names its method: "RSS"/"PSS" are smaps_rollup sums over the daemon's processes,
# "walk" is sys.getsizeof of each worker's per-tenant metrics objects (bench/metrics_probe.py).
METRICS_LABELS = {
    "walk_b_per_tenant": ("metrics objects per busy tenant, all workers", "B", "walk"),
    "walk_b_per_tenant_worker": (
        "metrics objects per tenant per worker that counted",
        "B",
        "walk",
    ),  # fmt: skip
    "busy_walk_tenants": ("tenants with counters, summed over workers", "", "walk"),
    "busy_walk_tenant_metrics_bytes": (
        "  of which TenantMetrics objects, all tenants",
        "B",
        "walk",
    ),
    "busy_walk_lists_bytes": ("  of which their lists, all tenants", "B", "walk"),
    "busy_walk_numbers_bytes": ("  of which int/float objects, all tenants", "B", "walk"),
    "busy_walk_upstream_errors_bytes": (
        "  of which upstream error dicts, all tenants",
        "B",
        "walk",
    ),
    "idle_walk_bytes": ("metrics objects while idle (all tenants)", "B", "walk"),
    "idle_walk_tenants": ("tenants with counters while idle (start's probe)", "", "walk"),
    "scraped_walk_bytes": ("metrics objects after the scrape (all tenants)", "B", "walk"),
    "listener_rss_b_per_tenant": (
        "idle, with the listener - without, per tenant",
        "B",
        "RSS, two starts",
    ),  # fmt: skip
    "listener_pss_b_per_tenant": ("same, PSS", "B", "PSS, two starts"),
    "busy_rss_b_per_tenant": ("busy - idle, per tenant", "B", "RSS, same process"),
    "busy_pss_b_per_tenant": ("busy - idle, per tenant", "B", "PSS, same process"),
    "scrape_rss_b_per_tenant": ("after one scrape - busy, per tenant", "B", "RSS, same process"),
    "scrape_pss_b_per_tenant": ("after one scrape - busy, per tenant", "B", "PSS, same process"),
    "plain_idle_rss_kb": ("idle RSS without the metrics listener", "MiB", "RSS"),
    "idle_rss_kb": ("idle RSS with the metrics listener", "MiB", "RSS"),
    "busy_rss_kb": ("RSS, every tenant busy", "MiB", "RSS"),
    "scraped_rss_kb": ("RSS after one scrape", "MiB", "RSS"),
    "plain_idle_pss_kb": ("idle PSS without the metrics listener", "MiB", "PSS"),
    "idle_pss_kb": ("idle PSS with the metrics listener", "MiB", "PSS"),
    "busy_pss_kb": ("PSS, every tenant busy", "MiB", "PSS"),
    "scraped_pss_kb": ("PSS after one scrape", "MiB", "PSS"),
    "scrape_bytes": ("/metrics answer", "B", "body size"),
    "scrape_bytes_per_tenant": ("/metrics answer per tenant", "B", "body size"),
    "scrape_series": ("/metrics series", "", "body"),
    "scrape_ms": ("/metrics answer time", "ms", "wall, at the client"),
    "scrape_us_per_tenant": ("/metrics answer time per tenant", "µs", "wall, at the client"),
    "scrape_cpu_us_per_tenant": ("/metrics CPU per tenant", "µs", "CPU of all processes"),
    "traffic_requests": ("requests made (4 per tenant)", "", "client"),
    "traffic_failed": ("requests with the wrong status class", "", "client"),
    "scrape_requests_2xx": ("scraped 2xx sum (2 per tenant)", "", "body"),
    "scrape_requests_4xx": ("scraped 4xx sum (1 per tenant)", "", "body"),
    "scrape_requests_5xx": ("scraped 5xx sum (1 per tenant)", "", "body"),
    "scrape_upstream_connect_errors": ("scraped upstream connect errors", "", "body"),
    "processes": ("processes", "", "/proc"),
}
METRICS_FIELDS = list(METRICS_LABELS)
