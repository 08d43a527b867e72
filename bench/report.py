"""Summaries of a run's samples, and its text forms: the stdout table and the Markdown file."""

from __future__ import annotations

import statistics

from bench.fields import LABELS, METRICS_LABELS
from bench.targets import stat

MIB = 1024.0  # /proc reports kB (KiB); tables use MiB
ISSUES = {
    18: "issue 18, TLS at scale (per-tenant certificates)",
    14: "issue 14, binder and workers",
    3: "issue 3, first memory and speed targets",
}
CHART_NAMES = {
    "memory": "idle memory",
    "start-add": "start and tenant add",
    "throughput": "requests per second and per CPU-second",
    "handshakes": "TLS handshakes",
    "latency": "latency",
}


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
    """A repetition's main figures on one line (progress output)."""
    parts = []
    if "idle_rss_kb" in sample:
        parts.append(
            f"rss {sample['idle_rss_kb'] / MIB:.1f}/{sample['tls_idle_rss_kb'] / MIB:.1f} MiB, "
            f"pss {sample['idle_pss_kb'] / MIB:.1f}/{sample['tls_idle_pss_kb'] / MIB:.1f} MiB"
        )
        parts.append(f"up {sample['listen_all_s']:.2f}/{sample['tls_listen_all_s']:.2f} s")
    if "http_rps" in sample:
        parts.append(f"http {sample['http_rps']:.0f}/s")
        if sample.get("http_req_per_cpu_s"):
            parts.append(f"{sample['http_req_per_cpu_s']:.0f}/cpu-s")
        parts.append(f"p99 {sample['http_p99_ms']:.2f} ms")
        parts.append(f"tls {sample['https_rps']:.0f}/s")
    if sample.get("hs_full_per_cpu_s"):
        parts.append(
            f"handshakes {sample['hs_full_per_cpu_s']:.0f} full / "
            f"{sample['hs_resumed_per_cpu_s']:.0f} resumed per cpu-s"
        )
    if "add_tenant_ms" in sample:
        parts.append(
            f"add {sample['add_tenant_ms']:.0f}/{sample['tls_add_tenant_ms']:.0f} ms "
            f"({sample['add_failed_requests']}/{sample['tls_add_failed_requests']} failed)"
        )
    if "idle_rss_kb" in sample:
        parts.append("(x/y: HTTP listeners only / with HTTPS listeners too)")
    return ", ".join(parts)


def cell(summary: dict, field: str) -> str:
    """'median ±half-spread%' in the field's unit (kB shown as MiB)."""
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
    elif field.endswith("_ms") or field.endswith("_s"):
        text = f"{med:.3g}" if med < 10 else f"{med:.0f}"
    if s["n"] > 1 and s["median"]:
        text += f" ±{s['spread_pct'] / 2:.0f}%"
    return text


def _rows(result: dict, n: int) -> tuple[list[str], list[tuple[str, list[str]]], list[str]]:
    """Column ids, (label, cells) per shown field, and notes on points not measured."""
    ids = result["parameters"]["variants"]
    by_id = {p["contender"]: p for p in result["points"] if p["tenants"] == n}
    columns = [c for c in ids if c in by_id]
    rows = []
    for field, (label, unit) in LABELS.items():
        cells = []
        for c in columns:
            p = by_id[c]
            if p["status"] != "ok":
                cells.append(p["status"])
            elif field not in p.get("fields", []):
                cells.append("n/a")
            else:
                cells.append(cell(p.get("summary", {}), field))
        if any(x not in ("n/a", "skipped") for x in cells):
            rows.append((f"{label} ({unit})" if unit else label, cells))
    notes = [
        f"{c}: {by_id[c]['status']}: {by_id[c]['reason']}" for c in columns if by_id[c]["reason"]
    ]
    return columns, rows, notes


def _verdict_lines(result: dict, markdown: bool) -> list[str]:
    lines = []
    for issue, title in ISSUES.items():
        verdicts = [t for t in result["targets"] if t["issue"] == issue]
        if not verdicts:
            continue
        lines.append(f"### nsproxy targets, {title}" if markdown else f"nsproxy targets, {title}:")
        if markdown:
            lines.append("")
        for t in verdicts:
            if markdown:
                note = f" ({t['note']})" if t["note"] else ""
                lines.append(f"- **{t['status']}** {t['target']}: {t['value']}{note}")
            else:
                note = f"  [{t['note']}]" if t["note"] else ""
                lines.append(f"  {t['status']:<13} {t['target']}: {t['value']}{note}")
        lines.append("")
    return lines


def _setup_line(result: dict) -> str:
    p = result["parameters"]
    pins = "; ".join(f"{v['id']} on CPU {v['cpus']}" for v in p["variant_details"])
    return (
        f"TLS: {p['tls']['label']}. Load generator (wrk, s_time), backend and harness on CPU "
        f"{p['load_cpu']}; {pins}. {p['repeat']} repetition(s), {p['duration_s']} s per load, "
        f"{p['connections']} keep-alive connections, handshakes {p['handshake_seconds']} s from "
        f"{p['handshake_clients']} clients. Loads at N = "
        f"{', '.join(map(str, p['load_tenants'])) or 'none'}; 2+ workers/threads at N = "
        f"{', '.join(map(str, p['scaling_tenants'])) or 'none'}; other N: start and memory only."
    )


def metrics_line(sample: dict) -> str:
    """A metrics-cost repetition's main figures on one line (progress output)."""
    return (
        f"metrics objects {sample['walk_b_per_tenant']:.0f} B per busy tenant (walk, "
        f"{sample['busy_walk_tenants']} tenant counters over the workers); RSS idle "
        f"{sample['plain_idle_rss_kb'] / MIB:.1f} -> {sample['idle_rss_kb'] / MIB:.1f} MiB with "
        f"the listener, busy {sample['busy_rss_kb'] / MIB:.1f}, scraped "
        f"{sample['scraped_rss_kb'] / MIB:.1f}; /metrics {sample['scrape_bytes']} B in "
        f"{sample['scrape_ms']:.0f} ms; {sample['traffic_failed']} failed requests"
    )


def _metrics_cell(summary: dict, field: str) -> str:
    s = summary.get(field)
    if not s:
        return "-"

    def fmt(value) -> str:
        if field.endswith("_kb"):
            return f"{value / MIB:.1f}"
        return f"{value:.0f}" if abs(value) >= 100 or isinstance(value, int) else f"{value:.3g}"

    text = fmt(s["median"])
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f" ({fmt(s['min'])}..{fmt(s['max'])})"
    return text


def metrics_rows(result: dict) -> list[tuple[str, list[str], list[tuple[str, str, list[str]]]]]:
    """Per tenant count with a metrics-cost point: (title, columns, [(label, method, cells)])."""
    blocks = []
    points = result.get("metrics_cost", [])
    for n in sorted({p["tenants"] for p in points}):
        here = [p for p in points if p["tenants"] == n]
        columns = [p["contender"] for p in here]
        rows = []
        for field, (label, unit, method) in METRICS_LABELS.items():
            cells = [
                _metrics_cell(p.get("summary", {}), field) if p["status"] == "ok" else p["status"]
                for p in here
            ]
            rows.append((f"{label} ({unit})" if unit else label, method, cells))
        notes = [f"{p['contender']}: {p['status']}: {p['reason']}" for p in here if p["reason"]]
        blocks.append((f"metrics cost at N = {n} tenants", columns, rows, notes))
    return blocks


def _metrics_setup_line(result: dict) -> str:
    p = result["parameters"]
    pins = "; ".join(f"{v['id']} on CPU {v['cpus']}" for v in p["variant_details"])
    return (
        f"Metrics cost only (--metrics-only): HTTP listeners, 4 requests per tenant; harness and "
        f"backend on CPU {p['load_cpu']}; {pins}. {p['repeat']} repetition(s), settle "
        f"{p['settle_s']} s, {p.get('metrics_settle_s')} s after the traffic."
    )


def table(result: dict) -> str:
    """Contenders as columns, one block per tenant count; cells are 'median ±half-spread%'."""
    width, first = 14, 31
    lines = []
    for title, columns, rows, notes in metrics_rows(result):
        lines.append("")
        lines.append(title.ljust(58) + "".join(c.rjust(width + 14) for c in columns) + "  method")
        for label, method, cells in rows:
            lines.append(
                label.ljust(58) + "".join(x.rjust(width + 14) for x in cells) + "  " + method
            )
        lines += [f"  {x}" for x in notes]
    if result["parameters"].get("metrics_only"):
        return "\n".join(lines + ["", _machine_line(result), _metrics_setup_line(result)])
    for n in result["parameters"]["tenant_counts"]:
        columns, rows, notes = _rows(result, n)
        lines.append("")
        lines.append(f"N = {n} tenants".ljust(first) + "".join(c.rjust(width) for c in columns))
        for label, cells in rows:
            lines.append(label.ljust(first) + "".join(x.rjust(width) for x in cells))
        lines += [f"  {x}" for x in notes]
    lines.append("")
    lines += _verdict_lines(result, markdown=False)
    lines.append(_machine_line(result))
    lines.append(_setup_line(result))
    return "\n".join(lines)


def _machine_line(result: dict) -> str:
    m = result["machine"]
    return (
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, load average at start {' '.join(m['loadavg_at_start'])}, at the end "
        f"{' '.join(result.get('loadavg_at_end', []))}"
    )


def metrics_markdown(result: dict) -> list[str]:
    out = []
    for title, columns, rows, notes in metrics_rows(result):
        out += [f"## {title[0].upper()}{title[1:]}", "", "| figure | " + " | ".join(columns)
                + " | method |", "|---|" + "---:|" * len(columns) + "---|"]  # fmt: skip
        out += [
            f"| {label} | " + " | ".join(cells) + f" | {method} |" for label, method, cells in rows
        ]
        out += [""] + [f"- {x}" for x in notes] + ([""] if notes else [])
    if out:
        out += [
            "Cells: median (min..max) over the repetitions. walk: sys.getsizeof of each worker's "
            "per-tenant metrics objects (bench/metrics_probe.py); RSS/PSS: smaps_rollup summed "
            "over the daemon's processes; per-tenant figures are differences within one "
            "repetition divided by N (bench/metrics_cost.py).",
            "",
        ]
    return out


def markdown(result: dict, charts: list[str] = ()) -> str:
    """The run as Markdown: setup, per-N tables, worker scaling, targets, embedded charts."""
    p = result["parameters"]
    m = result["machine"]
    out = [
        f"# Benchmark run {result['started']} "
        f"({'metrics cost' if p.get('metrics_only') else p['tls']['label']})",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, {m['os']}; load average at start {' '.join(m['loadavg_at_start'])}, "
        f"at the end {' '.join(result.get('loadavg_at_end', []))}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; "
        f"commit {m['git_commit']}. Whole run: {result.get('duration_s', 0) / 60:.1f} min.",
        "",
        _metrics_setup_line(result)
        if p.get("metrics_only")
        else _setup_line(result) + " Cells: median ±half the min-max spread.",
        "",
        "Variants: " + "; ".join(f"`{v['id']}` = {v['label']}" for v in p["variant_details"]) + ".",
        "",
    ]
    out += metrics_markdown(result)
    if p.get("metrics_only"):
        return "\n".join(out) + "\n"
    for n in p["tenant_counts"]:
        columns, rows, notes = _rows(result, n)
        out += [f"## {n} tenants", "", "| figure | " + " | ".join(columns) + " |"]
        out.append("|---|" + "---:|" * len(columns))
        out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        out += [""] + [f"- {x}" for x in notes] + ([""] if notes else [])
    out += scaling_markdown(result)
    out += ["## Targets", ""]
    out += _verdict_lines(result, markdown=True)
    if charts:
        out += ["## Charts", ""]
        for path in charts:
            file = path.rsplit("/", 1)[-1]
            name = next((t for k, t in CHART_NAMES.items() if file.endswith(f"-{k}.png")), file)
            out += [f"![{name}]({file})", ""]
    return "\n".join(out) + "\n"


def scaling_markdown(result: dict) -> list[str]:
    """Workers 1 and 2 (and nbthread 1 and 2) side by side at the scaling tenant counts."""
    p = result["parameters"]
    points = result["points"]
    pairs = [("nsproxy-w1", "nsproxy-w2"), ("haproxy-t1", "haproxy-t2")]
    figures = [
        ("http_rps", "HTTP req/s (measured)", 0),
        ("http_req_per_cpu_s", "HTTP req per proxy CPU-s", 0),
        ("http_req_per_busiest_cpu_s", "HTTP req per busiest-thread CPU-s", 0),
        ("http_load_cpu_share", "wrk + backend CPU share", 2),
        ("http_p99_ms", "HTTP p99 (ms)", 2),
        ("tls_idle_rss_kb", "idle RSS, HTTP+HTTPS (MiB)", 1),
        ("tls_idle_pss_kb", "idle PSS, HTTP+HTTPS (MiB)", 1),
    ]
    out = []
    for n in p["scaling_tenants"]:
        columns = [c for pair in pairs for c in pair if stat(points, c, n, "http_rps") is not None]
        if not columns:
            continue
        out += [
            f"## 1 and 2 workers/threads at {n} tenants",
            "",
            "| figure | " + " | ".join(columns) + " | 2 ÷ 1 |",
            "|---|" + "---:|" * (len(columns) + 1),
        ]
        for field, label, digits in figures:
            cells, ratios = [], []
            for c in columns:
                v = stat(points, c, n, field)
                scale = MIB if field.endswith("_kb") else 1
                cells.append("-" if v is None else f"{v / scale:.{digits}f}")
            for one, two in pairs:
                a, b = stat(points, one, n, field), stat(points, two, n, field)
                if a and b:
                    ratios.append(f"{one.split('-')[0]} {b / a:.2f}")
            out.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(ratios)} |")
        out.append("")
    return out
