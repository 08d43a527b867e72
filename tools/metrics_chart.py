#!/usr/bin/env python3
"""Draw a chart of a real nsproxy scrape: per-tenant request rate by status class, upstream
latency and upstream health over time, while a short scenario runs.

Everything happens in a throwaway sandbox (tools/sandbox.py, root needed): three tenant
namespaces (acme, globex, initech) at 10.0.0.250, echo upstreams on the sandbox's loopback
(tests/nsproxy/echo_server.py), and the daemon of this checkout (.venv/bin/nsproxy) with
``metrics.listen``. The scenario, over --duration seconds (D):

- acme and globex take steady load (20 requests/s each, one keep-alive client each);
- initech takes 10 requests/s, and from D/4 to D/2 its upstream answers 503 to half of them;
- globex's upstream has two servers; the second one is stopped from D/3 to 2D/3.

/metrics is scraped every second with curl; the samples (optionally saved as JSON) become a PNG
(matplotlib, Agg backend). The chart uses what the daemon exports: with the labelled metrics of
docs/metrics.md (``code``, ``nsproxy_upstream_server_up``) it plots request classes and each
server's health; with the older ones (requests and errors per tenant, upstream failures) it
plots those instead, and says so in the panel titles.

Usage: sudo .venv/bin/python tools/metrics_chart.py [--out docs/metrics-chart.png]
       [--duration 90] [--samples FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tools.sandbox import Sandbox  # noqa: E402

NSPROXY = str(REPO / ".venv" / "bin" / "nsproxy")
ECHO = str(REPO / "tests" / "nsproxy" / "echo_server.py")
ADDR = "10.0.0.250"
METRICS = "127.0.0.1:9108"
SOCKET = "/run/nsproxy/chart.sock"  # the sandbox's private /run
TENANTS = {  # tenant: (upstream servers, requests per second, upstream delay in seconds)
    "acme": (["127.0.0.1:9901"], 20, 0.004),
    "globex": (["127.0.0.1:9902", "127.0.0.1:9903"], 20, 0.012),
    "initech": (["127.0.0.1:9904"], 10, 0.002),
}
ECHO_SERVERS = {"9901": "acme", "9902": "globex-1", "9903": "globex-2", "9904": "initech"}
WINDOW = 3  # seconds of scrapes a rate or a quantile is computed over

# One keep-alive client in a tenant's namespace: a fixed request rate for a fixed time (both
# bounded), and in [error_from, error_to) every second request asks the echo upstream for 503.
CLIENT = textwrap.dedent(
    """\
    import http.client, sys, time
    tenant, rate, duration, delay, error_from, error_to = sys.argv[1], *map(float, sys.argv[2:7])
    start, n, conn = time.monotonic(), 0, None
    while time.monotonic() - start < duration and n < rate * duration + 10:
        t = time.monotonic() - start
        path = f"/{tenant}?delay={delay}"
        if error_from <= t < error_to and n % 2 == 0:
            path += "&status=503"
        try:
            conn = conn or http.client.HTTPConnection("10.0.0.250", 80, timeout=5)
            conn.request("GET", path)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn = None
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    """
)


def scenario(duration: float) -> dict:
    """When things happen, in seconds since the load started."""
    return {
        "initech_5xx": (duration / 4, duration / 2),
        "globex_server_down": (duration / 3, 2 * duration / 3),
    }


def start_echo(sb: Sandbox, port: str):
    proc = sb.popen(
        [sys.executable, ECHO, ECHO_SERVERS[port], f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the echo upstream on port {port} did not start")
    return proc


def scrape(sb: Sandbox) -> dict:
    """One scrape: {"name{label=value,...}": value}, histogram buckets included."""
    proc = sb.run(["curl", "-sS", "--max-time", "2", f"http://{METRICS}/metrics"], check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scraping {METRICS} failed: {proc.stderr.strip()}")
    out = {}
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def server_health(sb: Sandbox) -> dict:
    """{"tenant server": 1 or 0} from ``nsproxy status --json`` (the daemon's own view of each
    upstream server's passive health), for a daemon that does not export it as a metric."""
    proc = sb.run([NSPROXY, "status", "--socket", SOCKET, "--json"], check=False)
    if proc.returncode != 0:
        return {}
    out = {}
    for tenant in json.loads(proc.stdout).get("tenants", []):
        for upstream in tenant.get("upstreams") or []:
            for server in upstream.get("servers") or []:
                out[f"{tenant['name']} {server['address']}"] = 1 if server.get("healthy") else 0
    return out


def run_scenario(duration: float) -> dict:
    """Run the daemon and the scenario in a sandbox; returns {"t": [...], "samples": [...],
    "health": [...], "events": {...}} with one scrape (and one status) per second."""
    events = scenario(duration)
    with Sandbox() as sb:
        for name in TENANTS:
            sb.sh(
                f"ip netns add {name} && ip -n {name} link set lo up && "
                f"ip -n {name} addr add {ADDR}/32 dev lo"
            )
        echoes = {port: start_echo(sb, port) for port in ECHO_SERVERS}
        config = {
            "instance": "chart",
            "admin_socket": SOCKET,
            "metrics": {"listen": METRICS},
            "tenants": [
                {
                    "name": name,
                    "netns": name,
                    "listeners": [{"listen": f"{ADDR}:80", "protocol": "http"}],
                    "routes": [{"host": "*", "path_prefix": "/", "upstream": "app"}],
                    "upstreams": {"app": {"netns": None, "servers": servers}},
                }
                for name, (servers, _, _) in TENANTS.items()
            ],
        }
        sb.sh("mkdir -p /run/nsproxy")
        config_path = "/run/nsproxy/chart.json"
        sb.run(["sh", "-c", f"cat > {config_path}"], input=json.dumps(config))
        daemon = sb.popen([NSPROXY, "run", "--config", config_path], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while sb.run(["curl", "-sf", f"http://{METRICS}/metrics"], check=False).returncode:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nsproxy did not start serving its metrics")
            time.sleep(0.1)

        client = Path(sb.run(["mktemp", "/run/nsproxy/client-XXXX.py"]).stdout.strip())
        sb.run(["sh", "-c", f"cat > {client}"], input=CLIENT)
        errors = events["initech_5xx"]
        for name, (_, rate, delay) in TENANTS.items():
            window = errors if name == "initech" else (-1, -1)
            sb.popen(
                ["ip", "netns", "exec", name, sys.executable, str(client), name, str(rate),
                 str(duration + WINDOW + 2), str(delay), str(window[0]), str(window[1])],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip

        down_from, down_to = events["globex_server_down"]
        start = time.monotonic()
        times, samples, health = [], [], []
        stopped = None
        for tick in range(int(duration) + 1):
            time.sleep(max(0.0, start + tick - time.monotonic()))
            t = time.monotonic() - start
            if stopped is None and down_from <= t < down_to:
                echoes["9903"].terminate()
                echoes["9903"].wait(timeout=10)
                stopped = True
            elif stopped and t >= down_to:
                echoes["9903"] = start_echo(sb, "9903")
                stopped = False
            times.append(round(t, 3))
            samples.append(scrape(sb))
            health.append(server_health(sb))
    return {"t": times, "samples": samples, "health": health, "events": events}


# -- series from the samples ------------------------------------------------------------------


def series(data: dict, name: str, **want) -> dict[str, list]:
    """{label string: values over time} of the samples of ``name`` whose labels include want."""
    out: dict[str, list] = {}
    for i, sample in enumerate(data["samples"]):
        for key, value in sample.items():
            metric, _, labels = key.partition("{")
            if metric != name:
                continue
            pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
            if all(pairs.get(k) == v for k, v in want.items()):
                out.setdefault(labels.rstrip("}"), [math.nan] * len(data["samples"]))[i] = value
    return out


def label(labels: str, key: str) -> str:
    return dict(p.split("=", 1) for p in labels.split(",") if p).get(key, "")


def rate(values: list, times: list) -> list:
    """Per-second increase of a counter over the last WINDOW scrapes (NaN before that)."""
    out = [math.nan] * len(values)
    for i in range(WINDOW, len(values)):
        dt = times[i] - times[i - WINDOW]
        out[i] = max(0.0, values[i] - values[i - WINDOW]) / dt if dt > 0 else math.nan
    return out


def quantile(q: float, buckets: dict[float, list], i: int) -> float:
    """histogram_quantile over the increase of each bucket in the last WINDOW scrapes, with
    linear interpolation inside a bucket (as Prometheus does)."""
    bounds = sorted(buckets)
    counts = [buckets[b][i] - buckets[b][i - WINDOW] for b in bounds]
    total = counts[-1]
    if not total or math.isnan(total):
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return math.nan


def latency(data: dict, tenant: str, q: float) -> list:
    buckets = {}
    for labels, values in series(
        data, "nsproxy_upstream_latency_seconds_bucket", tenant=tenant
    ).items():
        buckets[float(label(labels, "le"))] = values
    out = [math.nan] * len(data["t"])
    if buckets:
        for i in range(WINDOW, len(out)):
            out[i] = quantile(q, buckets, i) * 1000
    return out


# -- the chart --------------------------------------------------------------------------------


def render(data: dict, out: Path) -> list[str]:
    """Draw the PNG; returns the panel titles (what the chart shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = data["t"]
    colours = dict(zip(TENANTS, ("tab:blue", "tab:orange", "tab:green")))
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    titles = []

    def mark_events(ax):
        a, b = data["events"]["initech_5xx"]
        ax.axvspan(a, b, color="tab:red", alpha=0.08)
        a, b = data["events"]["globex_server_down"]
        ax.axvspan(a, b, color="tab:gray", alpha=0.12)

    # 1. request rate by status class (or requests and errors)
    ax = axes[0]
    by_code = series(data, "nsproxy_requests_total")
    if any(label(k, "code") for k in by_code):
        titles.append("Requests per second by tenant and status class")
        for labels, values in sorted(by_code.items()):
            tenant, code = label(labels, "tenant"), label(labels, "code")
            if max((v for v in values if not math.isnan(v)), default=0) == 0:
                continue
            style = "-" if code.startswith(("2", "3")) else "--"
            ax.plot(t, rate(values, t), style, color=colours.get(tenant), label=f"{tenant} {code}")
    else:
        titles.append("Requests per second by tenant: all, and answered 4xx/5xx (dashed)")
        for tenant in TENANTS:
            for name, style, what in (
                ("nsproxy_requests_total", "-", "all"),
                ("nsproxy_errors_total", "--", "4xx/5xx"),
            ):
                for values in series(data, name, tenant=tenant).values():
                    ax.plot(
                        t, rate(values, t), style, color=colours[tenant], label=f"{tenant} {what}"
                    )
    ax.set_ylabel("requests per second")

    # 2. upstream latency p50 / p99
    ax = axes[1]
    titles.append("Upstream latency (request sent to response head), p50 and p99 (dotted)")
    for tenant in TENANTS:
        ax.plot(t, latency(data, tenant, 0.5), "-", color=colours[tenant], label=f"{tenant} p50")
        ax.plot(t, latency(data, tenant, 0.99), ":", color=colours[tenant], label=f"{tenant} p99")
    ax.set_ylabel("milliseconds")

    # 3. upstream health
    ax = axes[2]
    up = series(data, "nsproxy_upstream_server_up")
    if up:
        titles.append("Upstream servers up (1) or marked down (0)")
        for offset, (labels, values) in enumerate(sorted(up.items())):
            tenant, server = label(labels, "tenant"), label(labels, "server")
            shifted = [v + offset * 0.04 for v in values]  # keep overlapping lines apart
            ax.step(t, shifted, where="post", color=colours.get(tenant), label=f"{tenant} {server}")
        ax.set_ylabel("up")
    else:
        titles.append(
            "Upstream servers healthy (1) or marked down (0), from nsproxy status "
            "(nsproxy_upstream_server_up is not exported yet)"
        )
        names = sorted({name for tick in data["health"] for name in tick})
        for offset, name in enumerate(names):
            values = [tick.get(name, math.nan) + offset * 0.04 for tick in data["health"]]
            ax.step(t, values, where="post", color=colours.get(name.split()[0]), label=name)
        ax.set_ylabel("up")
    ax.set_xlabel("seconds since the load started")

    for ax, title in zip(axes, titles):
        mark_events(ax)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, t[-1])
        ax.legend(fontsize=7, ncol=3, loc="best")
    fig.suptitle(
        "nsproxy /metrics scraped every second, 3 tenants (rates and quantiles over "
        f"{WINDOW} s)\nred band: initech's upstream answers 503 to half its requests; "
        "grey band: one of globex's two upstream servers is stopped",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return titles


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "metrics-chart.png")
    parser.add_argument("--duration", type=float, default=90, help="seconds of load (10..600)")
    parser.add_argument("--samples", type=Path, help="also write the scrapes as JSON here")
    args = parser.parse_args(argv)
    if not 10 <= args.duration <= 600:
        parser.error("--duration: give 10 to 600 seconds")
    if os.geteuid() != 0:
        parser.error("run as root: the sandbox creates network and mount namespaces")
    data = run_scenario(args.duration)
    if args.samples:
        args.samples.write_text(json.dumps(data))
    for title in render(data, args.out):
        print(f"panel: {title}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
