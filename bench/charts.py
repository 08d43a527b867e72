"""The PNG charts of a run, sized to be embedded in a README.

Axes carry plain unit labels ("30 MiB", "2 s", "50 ms", "40,000"), never powers of ten. nginx
(one instance per namespace, gigabytes and seconds at 1000 tenants) has panels of its own, so
that it does not squash the others. Every title names the TLS variant of the run (per-tenant
certificates, or the shared one).
"""

from __future__ import annotations

from pathlib import Path

from bench import targets as tg
from bench.targets import stat

MIB = 1024.0
COLORS = {
    "nsproxy": "tab:blue",
    "nsproxy-w1": "tab:blue",
    "nsproxy-w2": "navy",
    "nsproxy-wauto": "tab:cyan",
    "haproxy-t1": "tab:orange",
    "haproxy-t2": "saddlebrown",
    "nginx": "tab:green",
    "direct": "black",
}


def _color(cid: str, i: int) -> str:
    return COLORS.get(cid, f"C{i % 10}")


def _unit(unit: str, scale: float = 1.0):
    from matplotlib.ticker import FuncFormatter

    def fmt(value, _pos):
        v = value / scale
        if v == 0:
            return f"0 {unit}".strip()
        text = f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"
        return f"{text} {unit}".strip()

    return FuncFormatter(fmt)


def _memory_scale(points, ids, fields, counts) -> tuple[float, str]:
    """(kB per axis unit, unit): GiB when the largest value shown passes 2 GiB, else MiB."""
    top = max(
        (stat(points, c, n, f, "max") or 0 for c in ids for n in counts for f in fields),
        default=0,
    )
    return (MIB * 1024, "GiB") if top > 2 * MIB * 1024 else (MIB, "MiB")


def _log_y(ax, unit: str, scale: float = 1.0) -> None:
    """A log y axis labelled 1, 2, 5, 10, 20, 50 ... in the unit (no 10^x)."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(_unit(unit, scale))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _x_tenants(ax, counts: list[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{c:,}" for c in counts])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("tenants")
    if len(counts) == 1:
        ax.set_xlim(counts[0] / 2, counts[0] * 2)


def _series(points, cid, field, counts):
    xs, ys, lo, hi = [], [], [], []
    for n in counts:
        med = stat(points, cid, n, field)
        if med is None:
            continue
        xs.append(n)
        ys.append(med)
        lo.append(med - stat(points, cid, n, field, "min"))
        hi.append(stat(points, cid, n, field, "max") - med)
    return xs, ys, [lo, hi]


def _lines(ax, points, ids, field, counts, scale, style, suffix, alpha=1.0):
    for i, cid in enumerate(ids):
        xs, ys, err = _series(points, cid, field, counts)
        if xs:
            ax.errorbar(
                xs,
                [y / scale for y in ys],
                yerr=[[e / scale for e in err[0]], [e / scale for e in err[1]]],
                fmt=style + "o",
                color=_color(cid, i),
                capsize=3,
                alpha=alpha,
                label=f"{cid}{suffix}",
            )


def _bars(ax, points, ids, field, counts, scale=1.0, alpha=1.0, label_suffix="", hatch=None):
    """Grouped bars: one group per tenant count, one bar per variant, whiskers min..max."""
    width = 0.8 / max(1, len(ids))
    drawn = False
    for i, cid in enumerate(ids):
        xs, ys, lo, hi = [], [], [], []
        for g, n in enumerate(counts):
            med = stat(points, cid, n, field)
            if med is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(med / scale)
            lo.append((med - stat(points, cid, n, field, "min")) / scale)
            hi.append((stat(points, cid, n, field, "max") - med) / scale)
        if xs:
            drawn = True
            ax.bar(
                xs,
                ys,
                width * 0.9,
                yerr=[lo, hi],
                capsize=2,
                color=_color(cid, i),
                alpha=alpha,
                hatch=hatch,
                label=f"{cid}{label_suffix}",
            )
    ax.set_xticks(range(len(counts)), [f"{n:,}" for n in counts])
    ax.set_xlabel("tenants")
    return drawn


def _legend_on_top(fig, ax) -> None:
    """One legend for the figure, in a row under its title (bars stay uncovered)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        top = 1 - 0.5 / fig.get_figheight()
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(8, len(labels)),
            fontsize=8,
            bbox_to_anchor=(0.5, top),
            frameon=False,
        )


def charts(result: dict, out: Path, stamp: str) -> list[Path]:
    """Write the PNG charts; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    params = result["parameters"]
    ids = params["variants"]
    others = [c for c in ids if c not in ("nginx", "direct")]
    has_nginx = any(p["contender"] == "nginx" and p["status"] == "ok" for p in points)
    counts = params["tenant_counts"]
    load_counts = params["load_tenants"]
    tls = params["tls"]["label"]
    m = result["machine"]
    footer = (
        f"{m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}; medians of "
        f"{params['repeat']} run(s), whiskers min..max; run {stamp}"
    )
    paths = []

    def finish(fig, name, title, legend=False):
        fig.suptitle(title, fontsize=12)
        fig.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=7, color="gray")
        top = 1 - 0.8 / fig.get_figheight() if legend else 0.97
        fig.tight_layout(rect=(0, 0.03, 1, top))
        path = out / f"{stamp}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    def grid(ax):
        ax.grid(True, alpha=0.3, which="major")

    # memory --------------------------------------------------------------------------------
    fig, axs = plt.subplots(1, 2 if has_nginx else 1, figsize=(12 if has_nginx else 9, 5))
    axs = list(axs) if has_nginx else [axs]
    ax = axs[0]
    memory = ("tls_idle_rss_kb", "tls_idle_pss_kb", "idle_rss_kb")
    scale, unit = _memory_scale(points, others, memory, counts)
    _lines(ax, points, others, "tls_idle_rss_kb", counts, scale, "-", " RSS")
    _lines(ax, points, others, "tls_idle_pss_kb", counts, scale, "--", " PSS")
    _lines(ax, points, others, "idle_rss_kb", counts, scale, ":", " RSS, HTTP only", 0.5)
    ha = stat(points, tg.HAPROXY_1, tg.AT, "tls_idle_rss_kb")
    if ha:
        ax.plot(
            [tg.AT],
            [ha * tg.RSS_VS_HAPROXY_1000 / scale],
            "rx",
            markersize=11,
            mew=2,
            label=f"nsproxy target: {tg.RSS_VS_HAPROXY_1000}x haproxy-t1 RSS",
        )
    _x_tenants(ax, counts)
    ax.yaxis.set_major_formatter(_unit(unit))
    ax.set_ylim(bottom=0)
    ax.set_title("nsproxy and HAProxy (RSS and PSS summed over all processes)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    grid(ax)
    if has_nginx:
        ax = axs[1]
        scale, unit = _memory_scale(points, ["nginx"], memory, counts)
        _lines(ax, points, ["nginx"], "tls_idle_rss_kb", counts, scale, "-", " RSS")
        _lines(ax, points, ["nginx"], "tls_idle_pss_kb", counts, scale, "--", " PSS")
        _x_tenants(ax, [n for n in counts if stat(points, "nginx", n, "tls_idle_rss_kb")] or counts)
        ax.yaxis.set_major_formatter(_unit(unit))
        ax.set_ylim(bottom=0)
        ax.set_title("nginx, one instance per namespace (own scale)", fontsize=10)
        ax.legend(fontsize=7)
        grid(ax)
    finish(fig, "memory", f"Idle memory, HTTP + HTTPS listener per tenant, {tls}")

    # start and add ---------------------------------------------------------------------------
    fig, axs = plt.subplots(1, 3 if has_nginx else 2, figsize=(15 if has_nginx else 11, 4.8))
    ax = axs[0]
    _lines(ax, points, others, "tls_listen_all_s", counts, 1, "-", ", HTTP+HTTPS")
    _lines(ax, points, others, "listen_all_s", counts, 1, ":", ", HTTP only", 0.5)
    shown = [(n, t) for n, t in ((tg.AT, tg.LISTEN_1000_S), (tg.AT_LARGE, tg.LISTEN_3000_S))]
    shown = [(n, t) for n, t in shown if n in counts]
    if shown:
        ax.plot(*zip(*shown), "rx", markersize=11, mew=2, label="nsproxy targets")
    _x_tenants(ax, counts)
    ax.yaxis.set_major_formatter(_unit("s"))
    ax.set_ylim(bottom=0)
    ax.set_title("Start: every listener accepts", fontsize=10)
    ax.legend(fontsize=7)
    grid(ax)
    ax = axs[1]
    _lines(ax, points, others, "tls_add_tenant_ms", load_counts, 1, "-", ", +HTTPS, own cert")
    _lines(ax, points, others, "add_tenant_ms", load_counts, 1, ":", ", HTTP only", 0.5)
    if tg.AT in load_counts:
        ax.plot([tg.AT], [tg.ADD_MS], "rx", markersize=11, mew=2, label="nsproxy target")
    _x_tenants(ax, load_counts)
    _log_y(ax, "ms")
    ax.set_title("Add one tenant to a running instance", fontsize=10)
    ax.legend(fontsize=7)
    grid(ax)
    if has_nginx:
        ax = axs[2]
        _lines(ax, points, ["nginx"], "tls_listen_all_s", counts, 1, "-", " start, HTTP+HTTPS")
        _lines(ax, points, ["nginx"], "tls_add_tenant_ms", counts, 1000, "--", " add one")
        _x_tenants(
            ax, [n for n in counts if stat(points, "nginx", n, "tls_listen_all_s")] or counts
        )
        ax.yaxis.set_major_formatter(_unit("s"))
        ax.set_ylim(bottom=0)
        ax.set_title("nginx, one instance per namespace (own scale)", fontsize=10)
        ax.legend(fontsize=7)
        grid(ax)
    finish(fig, "start-add", f"Start and growth, {tls}")

    # throughput ----------------------------------------------------------------------------
    proxies = [c for c in ids if c != "direct"]
    fig, axs = plt.subplots(3, 2, figsize=(12, 10))
    rows = (
        ("rps", ids, "requests/s (wrk in t0, keep-alive)", "req/s"),
        ("req_per_cpu_s", proxies, "requests per proxy CPU-second", "req/CPU-s"),
        ("req_per_busiest_cpu_s", proxies, "req per busiest-thread CPU-s", "req/CPU-s"),
    )
    for r, (field, shown, title, unit) in enumerate(rows):
        for col, v, name in ((0, "http", "plain HTTP"), (1, "https", "HTTPS")):
            ax = axs[r][col]
            _bars(ax, points, shown, f"{v}_{field}", load_counts)
            ax.yaxis.set_major_formatter(_unit(""))
            ax.set_ylabel(unit)
            ax.set_title(f"{name}: {title}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
    _legend_on_top(fig, axs[0][0])
    finish(fig, "throughput", f"Throughput, {tls}", legend=True)

    # handshakes ------------------------------------------------------------------------------
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, mode, title in (
        (axs[0], "full", "full handshakes (s_time -new) per proxy CPU-s"),
        (axs[1], "resumed", "resumed handshakes + 1 request (s_time -reuse) per proxy CPU-s"),
    ):
        _bars(ax, points, proxies, f"hs_{mode}_per_cpu_s", load_counts)
        ax.yaxis.set_major_formatter(_unit(""))
        ax.set_ylabel("handshakes / CPU-s")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    _legend_on_top(fig, axs[0])
    finish(fig, "handshakes", f"TLS handshakes, {tls}", legend=True)

    # latency -------------------------------------------------------------------------------
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, v, name in ((axs[0], "http", "plain HTTP"), (axs[1], "https", "HTTPS")):
        _bars(ax, points, ids, f"{v}_p99_ms", load_counts, alpha=0.35, label_suffix=" p99")
        _bars(ax, points, ids, f"{v}_p50_ms", load_counts, label_suffix=" p50")
        _log_y(ax, "ms")
        ax.set_title(
            f"{name} latency, {params['connections']} connections (p50 solid, p99 pale)",
            fontsize=10,
        )
        ax.grid(True, axis="y", alpha=0.3)
    _legend_on_top(fig, axs[0])
    finish(fig, "latency", f"Latency at saturation, {tls}", legend=True)
    return paths
