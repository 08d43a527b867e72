"""Summaries, nsproxy's targets, the stdout table and the PNG charts of a benchmark run."""

from __future__ import annotations

import statistics
from pathlib import Path

MIB = 1024.0  # /proc reports kB (KiB); charts and targets use MiB

# Targets of the daemon issue, checked on every run. kB and MB are read as KiB and MiB.
TARGET_RSS_1000_MIB = 32
TARGET_RSS_PER_TENANT_KB = 2
TARGET_LISTEN_1000_S = 1.0
TARGET_REQ_PER_CPU_VS_HAPROXY = 0.7
TARGET_ADD_MS = 50
TARGET_N = 1000

CONFIGS = (("", "HTTP listener per tenant"), ("tls_", "HTTP + TLS listeners per tenant"))

LABELS = {
    "listen_all_s": ("all listeners accept", "s"),
    "listen_cpu_s": ("CPU used to start", "s"),
    "idle_rss_kb": ("idle RSS (sum)", "MiB"),
    "idle_pss_kb": ("idle PSS (sum)", "MiB"),
    "load_rss_kb": ("RSS under load", "MiB"),
    "processes": ("processes", ""),
    "add_tenant_ms": ("add one tenant", "ms"),
    "add_failed_requests": ("failed req during add", ""),
    "tls_listen_all_s": ("+TLS: all listeners accept", "s"),
    "tls_listen_cpu_s": ("+TLS: CPU used to start", "s"),
    "tls_idle_rss_kb": ("+TLS: idle RSS (sum)", "MiB"),
    "tls_idle_pss_kb": ("+TLS: idle PSS (sum)", "MiB"),
    "tls_load_rss_kb": ("+TLS: RSS under TLS load", "MiB"),
    "tls_add_tenant_ms": ("+TLS: add one tenant", "ms"),
    "tls_add_failed_requests": ("+TLS: failed req in add", ""),
    "http_rps": ("HTTP req/s", ""),
    "http_req_per_cpu_s": ("HTTP req/proxy-CPU-s", ""),
    "http_proxy_cpu_share": ("HTTP proxy CPU share", ""),
    "http_p50_ms": ("HTTP p50", "ms"),
    "http_p99_ms": ("HTTP p99", "ms"),
    "http_failed": ("HTTP failed req", ""),
    "https_rps": ("TLS req/s", ""),
    "https_req_per_cpu_s": ("TLS req/proxy-CPU-s", ""),
    "https_proxy_cpu_share": ("TLS proxy CPU share", ""),
    "https_p50_ms": ("TLS p50", "ms"),
    "https_p99_ms": ("TLS p99", "ms"),
    "https_failed": ("TLS failed req", ""),
}
COLORS = {"nsproxy": "tab:blue", "haproxy": "tab:orange", "nginx": "tab:green", "direct": "black"}


def summarise(samples: list[dict], fields: list[str]) -> dict:
    """Median, min, max and spread of every field present (as a number) in all samples."""
    out = {}
    for f in fields:
        values = [s[f] for s in samples if isinstance(s.get(f), (int, float))]
        if not values or len(values) != len(samples):
            continue
        med = statistics.median(values)
        out[f] = {
            "median": med,
            "min": min(values),
            "max": max(values),
            "spread_pct": round(100 * (max(values) - min(values)) / med, 1) if med else 0.0,
            "n": len(values),
        }
    return out


def one_line(sample: dict) -> str:
    parts = []
    if "idle_rss_kb" in sample:
        parts.append(
            f"rss {sample['idle_rss_kb'] / MIB:.1f}/{sample['tls_idle_rss_kb'] / MIB:.1f} MiB"
        )
        parts.append(f"up {sample['listen_all_s']:.2f}/{sample['tls_listen_all_s']:.2f} s")
    parts.append(f"http {sample['http_rps']:.0f}/s")
    if sample.get("http_req_per_cpu_s"):
        parts.append(f"{sample['http_req_per_cpu_s']:.0f}/cpu-s")
    parts.append(f"p99 {sample['http_p99_ms']:.2f} ms")
    parts.append(f"tls {sample['https_rps']:.0f}/s")
    if "add_tenant_ms" in sample:
        parts.append(
            f"add {sample['add_tenant_ms']:.0f}/{sample['tls_add_tenant_ms']:.0f} ms "
            f"({sample['add_failed_requests']}/{sample['tls_add_failed_requests']} failed)"
        )
    if "idle_rss_kb" in sample:
        parts.append("(x/y: HTTP listeners only / with TLS listeners too)")
    return ", ".join(parts)


def _median(points: list[dict], contender: str, n: int, field: str):
    for p in points:
        if p["contender"] == contender and p["tenants"] == n and p["status"] == "ok":
            s = p.get("summary", {}).get(field)
            return s["median"] if s else None
    return None


def _max(points: list[dict], contender: str, n: int, field: str):
    for p in points:
        if p["contender"] == contender and p["tenants"] == n and p["status"] == "ok":
            s = p.get("summary", {}).get(field)
            return s["max"] if s else None
    return None


def _verdict(target: str, met, value: str, note: str = "") -> dict:
    status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[met]
    return {"target": target, "status": status, "met": met, "value": value, "note": note}


def evaluate_targets(points: list[dict]) -> list[dict]:
    """nsproxy's targets from the daemon issue, judged on this run's medians, for both
    configurations (HTTP listener per tenant; HTTP + TLS listeners per tenant)."""
    counts = sorted({p["tenants"] for p in points if p["contender"] == "nsproxy"})
    ok = [n for n in counts if _median(points, "nsproxy", n, "http_rps") is not None]
    at = TARGET_N if TARGET_N in ok else None
    missing = f"nsproxy was not measured at {TARGET_N} tenants in this run" + (
        f" (measured: {', '.join(map(str, ok))})" if ok else ""
    )
    out = []
    for prefix, config in CONFIGS:
        rss = _median(points, "nsproxy", at, f"{prefix}idle_rss_kb") if at else None
        out.append(
            _verdict(
                f"idle RSS at {TARGET_N} tenants <= {TARGET_RSS_1000_MIB} MiB ({config})",
                None if rss is None else rss / MIB <= TARGET_RSS_1000_MIB,
                "-" if rss is None else f"{rss / MIB:.1f} MiB",
                "" if rss is not None else missing,
            )
        )
        target = f"idle RSS per added tenant <= {TARGET_RSS_PER_TENANT_KB} kB ({config})"
        if len(ok) >= 2:
            lo, hi = ok[-2], ok[-1]
            slope = (
                _median(points, "nsproxy", hi, f"{prefix}idle_rss_kb")
                - _median(points, "nsproxy", lo, f"{prefix}idle_rss_kb")
            ) / (hi - lo)
            out.append(
                _verdict(
                    target,
                    slope <= TARGET_RSS_PER_TENANT_KB,
                    f"{slope:.2f} kB/tenant",
                    f"slope of the medians between {lo} and {hi} tenants"
                    + ("" if hi == TARGET_N else f"; not at {TARGET_N}"),
                )
            )
        else:
            out.append(_verdict(target, None, "-", "needs nsproxy at two tenant counts"))

        up = _median(points, "nsproxy", at, f"{prefix}listen_all_s") if at else None
        sockets = TARGET_N * (2 if prefix else 1)
        out.append(
            _verdict(
                f"all {TARGET_N} tenants' listeners accept in < {TARGET_LISTEN_1000_S} s "
                f"({config})",
                None if up is None else up < TARGET_LISTEN_1000_S,
                "-" if up is None else f"{up:.3f} s",
                missing
                if up is None
                else f"process start -> all {sockets} listening sockets complete a handshake; "
                f"{_median(points, 'nsproxy', at, f'{prefix}listen_cpu_s'):.2f} CPU-s used",
            )
        )

        add = _median(points, "nsproxy", at, f"{prefix}add_tenant_ms") if at else None
        worst = _max(points, "nsproxy", at, f"{prefix}add_tenant_ms") if at else None
        out.append(
            _verdict(
                f"adding one tenant to {TARGET_N} takes < {TARGET_ADD_MS} ms ({config})",
                None if add is None else add < TARGET_ADD_MS,
                "-" if add is None else f"{add:.1f} ms",
                missing
                if add is None
                else f"SIGHUP -> the new tenant's listeners accept; worst run {worst:.1f} ms",
            )
        )

        failed = [
            (n, _max(points, "nsproxy", n, f"{prefix}add_failed_requests"))
            for n in ok
            if _max(points, "nsproxy", n, f"{prefix}add_failed_requests") is not None
        ]
        out.append(
            _verdict(
                f"no failed request on a kept tenant while one is added ({config})",
                None if not failed else all(f == 0 for _, f in failed),
                "-" if not failed else f"{max(f for _, f in failed)} failed (worst run)",
                "; ".join(f"N={n}: worst {f}" for n, f in failed),
            )
        )

    ratios, detail = [], []
    for n in ok:
        mine = _median(points, "nsproxy", n, "http_req_per_cpu_s")
        theirs = _median(points, "haproxy", n, "http_req_per_cpu_s")
        if mine and theirs:
            ratios.append(mine / theirs)
            detail.append(f"N={n}: {mine:.0f} vs {theirs:.0f} ({mine / theirs:.2f}x)")
    out.append(
        _verdict(
            f"plain-HTTP req per proxy CPU-second >= {TARGET_REQ_PER_CPU_VS_HAPROXY}x HAProxy's",
            None if not ratios else min(ratios) >= TARGET_REQ_PER_CPU_VS_HAPROXY,
            "-" if not ratios else f"{min(ratios):.2f}x (worst N)",
            "; ".join(detail) if detail else "needs nsproxy and haproxy in the same run",
        )
    )
    return out


RATIO_FIELDS = [
    "idle_rss_kb",
    "tls_idle_rss_kb",
    "listen_all_s",
    "tls_listen_all_s",
    "http_rps",
    "http_req_per_cpu_s",
    "http_p50_ms",
    "http_p99_ms",
    "https_rps",
    "https_req_per_cpu_s",
    "https_p99_ms",
    "add_tenant_ms",
    "tls_add_tenant_ms",
]


def ratios(points: list[dict]) -> list[dict]:
    """Every contender's medians divided by HAProxy's and by the direct path's, per N."""
    out = []
    for p in points:
        if p["status"] != "ok" or p["contender"] == "direct":
            continue
        for ref in ("haproxy", "direct"):
            if p["contender"] == ref:
                continue
            row = {"tenants": p["tenants"], "contender": p["contender"], "vs": ref}
            for f in RATIO_FIELDS:
                a = _median(points, p["contender"], p["tenants"], f)
                b = _median(points, ref, p["tenants"], f)
                if a is not None and b:
                    row[f] = round(a / b, 3)
            if len(row) > 3:
                out.append(row)
    return out


def _cell(summary: dict, field: str) -> str:
    s = summary.get(field)
    if not s:
        return "-"
    scale = MIB if field.endswith("_kb") else 1
    if all(isinstance(s[k], int) for k in ("median", "min", "max")) and scale == 1:
        if s["min"] == s["max"]:
            return str(s["median"])
        return f"{s['median']} ({s['min']}-{s['max']})"
    med = s["median"] / scale
    text = f"{med:.1f}" if abs(med) < 100 else f"{med:.0f}"
    if field.endswith("_share"):
        text = f"{med:.2f}"
    if field.endswith("_ms") or field.endswith("_s"):
        text = f"{med:.3g}" if med < 10 else f"{med:.0f}"
    if s["n"] > 1 and s["median"]:
        text += f" ±{s['spread_pct'] / 2:.0f}%"
    return text


def table(result: dict) -> str:
    """Contenders as columns, one block per tenant count; cells are 'median ±half-spread%'."""
    points = result["points"]
    names = result["parameters"]["contenders"]
    lines = []
    width = 20
    for n in result["parameters"]["tenant_counts"]:
        row_points = {p["contender"]: p for p in points if p["tenants"] == n}
        lines.append("")
        lines.append(f"N = {n} tenants".ljust(28) + "".join(c.rjust(width) for c in names))
        for field, (label, unit) in LABELS.items():
            cells = []
            for c in names:
                p = row_points.get(c)
                if p is None:
                    cells.append("")
                elif p["status"] != "ok":
                    cells.append(p["status"])
                elif field in p.get("not_applicable", []):
                    cells.append("n/a")
                else:
                    cells.append(_cell(p.get("summary", {}), field))
            name = f"{label} ({unit})" if unit else label
            lines.append(name.ljust(28) + "".join(x.rjust(width) for x in cells))
        for p in row_points.values():
            if p["status"] != "ok":
                lines.append(f"  {p['contender']}: {p['status']}: {p['reason']}")
    lines.append("")
    lines.append("nsproxy targets (issue 3), judged on this run's medians:")
    for t in result["targets"]:
        note = f"  [{t['note']}]" if t["note"] else ""
        lines.append(f"  {t['status']:<13} {t['target']}: {t['value']}{note}")
    m = result["machine"]
    lines.append("")
    lines.append(
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}; proxies on CPU {result['parameters']['proxy_cpu']}, wrk+backend on CPU "
        f"{result['parameters']['load_cpu']}; {result['parameters']['repeat']} repetition(s) of "
        f"{result['parameters']['duration_s']} s"
    )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The run as Markdown: machine, per-N tables, ratios against HAProxy and direct, targets."""
    p = result["parameters"]
    m = result["machine"]
    names = p["contenders"]
    out = [
        f"# Benchmark run {result['started']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, {m['os']}; load average at start {' '.join(m['loadavg_at_start'])}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; "
        f"commit {m['git_commit']}.",
        f"Proxies pinned to CPU {p['proxy_cpu']}; wrk, backend and harness to CPU "
        f"{p['load_cpu']}. {p['repeat']} repetition(s), {p['duration_s']} s per load, "
        f"{p['connections']} keep-alive connections. Cells: median ±half the min-max spread.",
        "",
    ]
    for n in p["tenant_counts"]:
        row_points = {q["contender"]: q for q in result["points"] if q["tenants"] == n}
        out += [f"## {n} tenants", "", "| figure | " + " | ".join(names) + " |"]
        out.append("|---|" + "---:|" * len(names))
        for field, (label, unit) in LABELS.items():
            cells = []
            for c in names:
                q = row_points.get(c)
                if q is None:
                    cells.append("")
                elif q["status"] != "ok":
                    cells.append(q["status"])
                elif field in q.get("not_applicable", []):
                    cells.append("n/a")
                else:
                    cells.append(_cell(q.get("summary", {}), field))
            name = f"{label} ({unit})" if unit else label
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        for q in row_points.values():
            if q["status"] != "ok":
                out.append(f"\n{q['contender']} {q['status']}: {q['reason']}")
        out.append("")
    out += ["## Ratios (medians)", "", "| tenants | contender | vs | " + " | ".join(RATIO_FIELDS)]
    out[-1] += " |"
    out.append("|---|---|---|" + "---:|" * len(RATIO_FIELDS))
    for r in result["ratios"]:
        cells = [f"{r[f]:.2f}" if f in r else "" for f in RATIO_FIELDS]
        out.append(f"| {r['tenants']} | {r['contender']} | {r['vs']} | " + " | ".join(cells) + " |")
    out += ["", "## nsproxy targets", ""]
    for t in result["targets"]:
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"- **{t['status']}** {t['target']}: {t['value']}{note}")
    return "\n".join(out) + "\n"


# -- charts --------------------------------------------------------------------------------
def _series(points: list[dict], contender: str, field: str, scale: float = 1.0):
    xs, ys, lo, hi = [], [], [], []
    for p in sorted(points, key=lambda p: p["tenants"]):
        if p["contender"] != contender or p["status"] != "ok":
            continue
        s = p.get("summary", {}).get(field)
        if not s:
            continue
        xs.append(p["tenants"])
        ys.append(s["median"] / scale)
        lo.append((s["median"] - s["min"]) / scale)
        hi.append((s["max"] - s["median"]) / scale)
    return xs, ys, [lo, hi]


def _plot(ax, points, contenders, field, scale=1.0, style="-", label_suffix=""):
    for c in contenders:
        xs, ys, err = _series(points, c, field, scale)
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                fmt=style + "o",
                color=COLORS.get(c),
                capsize=3,
                label=c + label_suffix,
            )


def charts(result: dict, out: Path, stamp: str) -> list[Path]:
    """Write the PNG charts; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    points = result["points"]
    names = result["parameters"]["contenders"]
    proxies = [c for c in names if c != "direct"]
    counts = result["parameters"]["tenant_counts"]
    m = result["machine"]
    footer = (
        f"{m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}; medians of "
        f"{result['parameters']['repeat']} run(s), bars = min..max; {stamp}"
    )
    paths = []

    def finish(fig, name):
        fig.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / f"{stamp}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    def axes_style(ax, title, ylabel, logy=False, legend_outside=False):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("tenants")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.xaxis.set_minor_locator(NullLocator())
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3, which="both")
        if legend_outside:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        else:
            ax.legend(fontsize=8)

    # memory
    fig, ax = plt.subplots(figsize=(9.5, 5))
    _plot(ax, points, proxies, "idle_rss_kb", MIB, "-", ", idle, HTTP listeners")
    _plot(ax, points, proxies, "tls_idle_rss_kb", MIB, "--", ", idle, HTTP+TLS listeners")
    _plot(ax, points, proxies, "tls_load_rss_kb", MIB, ":", ", under TLS load")
    ax.plot(
        [TARGET_N],
        [TARGET_RSS_1000_MIB],
        "rx",
        markersize=10,
        label=f"nsproxy target: {TARGET_RSS_1000_MIB} MiB at {TARGET_N}",
    )
    axes_style(
        ax,
        "Resident memory, summed over each proxy's processes",
        "MiB (log)",
        logy=True,
        legend_outside=True,
    )
    finish(fig, "rss")

    # throughput and efficiency
    fig, axs = plt.subplots(2, 2, figsize=(10, 7.5))
    for col, v, title in ((0, "http", "plain HTTP"), (1, "https", "TLS")):
        _plot(axs[0][col], points, names, f"{v}_rps")
        axes_style(axs[0][col], f"{title}: requests/s (wrk in t0, keep-alive)", "req/s")
        axs[0][col].set_ylim(0, axs[0][col].get_ylim()[1] * 1.08)
        _plot(axs[1][col], points, proxies, f"{v}_req_per_cpu_s")
        if v == "http":
            xs, ys, _ = _series(points, "haproxy", "http_req_per_cpu_s")
            if xs:
                axs[1][col].plot(
                    xs,
                    [y * TARGET_REQ_PER_CPU_VS_HAPROXY for y in ys],
                    "--_",
                    color="tab:red",
                    lw=0.8,
                    markersize=16,
                    label="nsproxy target (0.7x haproxy)",
                )
        axes_style(axs[1][col], f"{title}: requests per proxy CPU-second", "req / CPU-s")
        axs[1][col].set_ylim(0, axs[1][col].get_ylim()[1] * 1.08)
    finish(fig, "req-per-cpu")

    # latency: bars per tenant count, p50 solid and p99 pale behind it
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.8))
    width = 0.8 / max(1, len(names))
    for col, v, title in ((0, "http", "plain HTTP"), (1, "https", "TLS")):
        ax = axs[col]
        for i, c in enumerate(names):
            for kind, alpha in (("p99", 0.35), ("p50", 1.0)):
                xs, ys = [], []
                for g, n in enumerate(counts):
                    value = _median(points, c, n, f"{v}_{kind}_ms")
                    if value is not None:
                        xs.append(g - 0.4 + width * (i + 0.5))
                        ys.append(value)
                if xs:
                    ax.bar(
                        xs,
                        ys,
                        width * 0.9,
                        color=COLORS.get(c),
                        alpha=alpha,
                        label=f"{c} {kind}",
                    )
        ax.set_xticks(range(len(counts)), [str(n) for n in counts])
        ax.set_xlabel("tenants")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(
            f"{title} latency, {result['parameters']['connections']} connections "
            "(p50 solid, p99 pale)",
            fontsize=11,
        )
        ax.grid(True, axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    finish(fig, "latency")

    # start-up and growth
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.8))
    _plot(axs[0], points, proxies, "listen_all_s", 1.0, "-", ", HTTP")
    _plot(axs[0], points, proxies, "tls_listen_all_s", 1.0, "--", ", HTTP+TLS")
    axs[0].plot([TARGET_N], [TARGET_LISTEN_1000_S], "rx", markersize=10, label="nsproxy target")
    axes_style(axs[0], "Start: every tenant's listeners accept", "s (log)", logy=True)
    _plot(axs[1], points, proxies, "add_tenant_ms", 1.0, "-", ", HTTP")
    _plot(axs[1], points, proxies, "tls_add_tenant_ms", 1.0, "--", ", HTTP+TLS")
    axs[1].plot([TARGET_N], [TARGET_ADD_MS], "rx", markersize=10, label="nsproxy target")
    axes_style(axs[1], "Add one tenant to a running instance", "ms (log)", logy=True)
    finish(fig, "start-add")
    return paths
