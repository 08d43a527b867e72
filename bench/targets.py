"""nsproxy's targets, judged on a run's medians: MET, MISSED or NOT MEASURED, with the figures.

Three issues set them. Issue 18 (TLS at scale, one certificate per tenant) and issue 14 (binder
and workers) compare nsproxy at ``workers: 1`` with HAProxy at ``nbthread 1``; issue 3 (the
first memory and speed targets) is judged on the same pair. "workers: 1" is the ``nsproxy-w1``
variant when the run has it, else ``nsproxy`` (no ``workers`` key, the daemon's default; today's
daemon is one process). kB and MB are read as KiB and MiB.
"""

from __future__ import annotations

MIB = 1024.0

# issue 18
RSS_VS_HAPROXY_1000 = 0.5
LISTEN_1000_S = 1.0
LISTEN_3000_S = 2.0
ADD_MS = 50
HANDSHAKES_VS_HAPROXY = 1.0
# issue 14
WORKERS2_SPEEDUP = 1.6
PSS_WORKERS2_VS_1 = 1.5
# issue 3
RSS_1000_MIB = 32
RSS_PER_TENANT_KB = 2
REQ_PER_CPU_VS_HAPROXY = 0.7

AT = 1000
AT_LARGE = 3000
HAPROXY_1, HAPROXY_2 = "haproxy-t1", "haproxy-t2"
NSPROXY_2 = "nsproxy-w2"
NEEDS_WORKERS = (
    "needs nsproxy-w1 and nsproxy-w2: run with --nsproxy-workers 1,2 (the binder/worker daemon)"
)


def stat(points: list[dict], contender: str | None, n: int | None, field: str, key="median"):
    """One summary statistic of a measured point, or None."""
    for p in points:
        if p["contender"] == contender and p["tenants"] == n and p["status"] == "ok":
            s = p.get("summary", {}).get(field)
            return s[key] if s else None
    return None


def nsproxy_one(points: list[dict], n: int | None, field: str) -> str | None:
    """The variant that stands for ``workers: 1`` at ``n``: nsproxy-w1, else nsproxy."""
    for cid in ("nsproxy-w1", "nsproxy"):
        if stat(points, cid, n, field) is not None:
            return cid
    return None


def _verdict(issue: int, target: str, met, value: str, note: str = "") -> dict:
    status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[met]
    return {
        "issue": issue,
        "target": target,
        "status": status,
        "met": met,
        "value": value,
        "note": note,
    }


def _mib(kb) -> str:
    return f"{kb / MIB:.1f} MiB"


def _ms(ms) -> str:
    return f"{ms:.1f} ms"


def evaluate(result: dict) -> list[dict]:
    """Every target of issues 18, 14 and 3 judged on this run (list of verdict dicts)."""
    return issue18(result) + issue14(result) + issue3(result)


# -- issue 18 --------------------------------------------------------------------------------
def issue18(result: dict) -> list[dict]:
    points = result["points"]
    shared = result["parameters"]["tls"]["shared"]
    caveat = "shared certificate (old variant), not the issue's per-tenant condition; " * shared
    label = result["parameters"]["tls"]["label"]
    out = []

    one = nsproxy_one(points, AT, "tls_idle_rss_kb")
    mine = stat(points, one, AT, "tls_idle_rss_kb")
    theirs = stat(points, HAPROXY_1, AT, "tls_idle_rss_kb")
    target = (
        f"idle RSS at {AT} tenants, HTTP + HTTPS listeners, <= {RSS_VS_HAPROXY_1000}x HAProxy's "
        "(workers 1 vs nbthread 1)"
    )
    if mine is None or theirs is None:
        out.append(
            _verdict(18, target, None, "-", caveat + f"needs nsproxy and {HAPROXY_1} at {AT}")
        )
    else:
        pss = [
            f"{cid} {_mib(v)}"
            for cid in (one, NSPROXY_2, HAPROXY_1, HAPROXY_2)
            if (v := stat(points, cid, AT, "tls_idle_pss_kb")) is not None
        ]
        out.append(
            _verdict(
                18,
                target,
                mine / theirs <= RSS_VS_HAPROXY_1000,
                f"{mine / theirs:.2f}x ({_mib(mine)} vs {_mib(theirs)})",
                caveat + f"{one}; {label}; summed PSS: " + ", ".join(pss),
            )
        )

    for n, limit in ((AT, LISTEN_1000_S), (AT_LARGE, LISTEN_3000_S)):
        one = nsproxy_one(points, n, "tls_listen_all_s")
        up = stat(points, one, n, "tls_listen_all_s")
        target = f"all listeners of {n} tenants (HTTP + HTTPS) accepting in < {limit:g} s"
        if up is None:
            out.append(_verdict(18, target, None, "-", caveat + f"nsproxy not measured at {n}"))
            continue
        cpu = stat(points, one, n, "tls_listen_cpu_s")
        ha = stat(points, HAPROXY_1, n, "tls_listen_all_s")
        note = f"{one}: {cpu:.2f} CPU-s to get there" + (
            f"; {HAPROXY_1} {ha:.2f} s" if ha is not None else ""
        )
        out.append(_verdict(18, target, up < limit, f"{up:.2f} s", caveat + note))

    one = nsproxy_one(points, AT, "tls_add_tenant_ms")
    add = stat(points, one, AT, "tls_add_tenant_ms")
    target = f"adding one tenant with its own certificate to {AT} in < {ADD_MS} ms"
    if add is None:
        missing = caveat + f"nsproxy's add not measured at {AT}"
        out.append(_verdict(18, target, None, "-", missing))
        out.append(_verdict(18, "0 failed requests while that tenant is added", None, "-", missing))
    else:
        worst = stat(points, one, AT, "tls_add_tenant_ms", "max")
        ha = stat(points, HAPROXY_1, AT, "tls_add_tenant_ms")
        note = f"{one}, worst run {_ms(worst)}" + (f"; {HAPROXY_1} {_ms(ha)}" if ha else "")
        out.append(_verdict(18, target, add < ADD_MS, _ms(add), caveat + note))
        failed = stat(points, one, AT, "tls_add_failed_requests", "max")
        looped = stat(points, one, AT, "tls_add_loop_requests")
        kept = stat(points, one, AT, "tls_add_requests")
        out.append(
            _verdict(
                18,
                "0 failed requests while that tenant is added",
                failed == 0,
                f"{failed} failed (worst run)",
                caveat
                + f"{one}: {kept:.0f} keep-alive requests on t0 and {looped:.0f} requests of "
                "the looping client (a new TLS connection each) in the median run",
            )
        )

    ratios, detail = [], []
    for n in result["parameters"]["load_tenants"]:
        one = nsproxy_one(points, n, "hs_full_per_cpu_s")
        mine = stat(points, one, n, "hs_full_per_cpu_s")
        theirs = stat(points, HAPROXY_1, n, "hs_full_per_cpu_s")
        if mine and theirs:
            ratios.append(mine / theirs)
            resumed = [
                f"{cid} {v:.0f}"
                for cid in (one, HAPROXY_1)
                if (v := stat(points, cid, n, "hs_resumed_per_cpu_s")) is not None
            ]
            detail.append(
                f"N={n}: {mine:.0f} vs {theirs:.0f} ({mine / theirs:.2f}x); resumed (+1 "
                f"request each) per proxy CPU-s: {', '.join(resumed)}"
            )
    key = result["parameters"]["tls"]["key_type"]
    out.append(
        _verdict(
            18,
            f"full TLS handshakes per proxy CPU-second >= {HANDSHAKES_VS_HAPROXY}x HAProxy's "
            f"(no resumption, {key} for both)",
            None if not ratios else min(ratios) >= HANDSHAKES_VS_HAPROXY,
            "-" if not ratios else f"{min(ratios):.2f}x (worst N)",
            caveat + ("; ".join(detail) if detail else f"needs nsproxy and {HAPROXY_1} with load"),
        )
    )
    return out


# -- issue 14 --------------------------------------------------------------------------------
def issue14(result: dict) -> list[dict]:
    points = result["points"]
    params = result["parameters"]
    out = []

    detail, ratios = [], []
    for n in params["scaling_tenants"]:
        one = stat(points, "nsproxy-w1", n, "http_req_per_busiest_cpu_s")
        two = stat(points, NSPROXY_2, n, "http_req_per_busiest_cpu_s")
        if not (one and two):
            continue
        ratios.append(two / one)
        rps1 = stat(points, "nsproxy-w1", n, "http_rps")
        rps2 = stat(points, NSPROXY_2, n, "http_rps")
        load2 = stat(points, NSPROXY_2, n, "http_load_cpu_share")
        text = (
            f"N={n}: {two:.0f} vs {one:.0f} req per busiest-thread CPU-s ({two / one:.2f}x); "
            f"measured req/s {rps2:.0f} vs {rps1:.0f} ({rps2 / rps1:.2f}x) with wrk and the "
            f"backend using {load2:.2f} CPU beside the workers"
        )
        h1 = stat(points, HAPROXY_1, n, "http_req_per_busiest_cpu_s")
        h2 = stat(points, HAPROXY_2, n, "http_req_per_busiest_cpu_s")
        if h1 and h2:
            hr1 = stat(points, HAPROXY_1, n, "http_rps")
            hr2 = stat(points, HAPROXY_2, n, "http_rps")
            text += f"; HAProxy nbthread 2/1: {h2 / h1:.2f}x, measured {hr2 / hr1:.2f}x"
        detail.append(text)
    out.append(
        _verdict(
            14,
            f"workers: 2 serves >= {WORKERS2_SPEEDUP}x the plain-HTTP req/s of workers: 1 with "
            "the load generator not the bottleneck (judged on req per busiest-thread CPU-s)",
            None if not ratios else min(ratios) >= WORKERS2_SPEEDUP,
            "-" if not ratios else f"{min(ratios):.2f}x (worst N)",
            "; ".join(detail) if detail else NEEDS_WORKERS,
        )
    )

    base = result.get("baseline") or {}
    detail, verdicts = [], []
    for n, ref in sorted((base.get("http_req_per_cpu_s") or {}).items(), key=lambda x: int(x[0])):
        one = nsproxy_one(points, int(n), "http_req_per_cpu_s")
        now = stat(points, one, int(n), "http_req_per_cpu_s")
        if now is None:
            continue
        verdicts.append(now >= ref["min"])
        detail.append(
            f"N={n}: {now:.0f} ({one}) vs {ref['median']:.0f} published "
            f"(its repetitions {ref['min']:.0f}..{ref['max']:.0f}; {now / ref['median'] - 1:+.1%})"
        )
    out.append(
        _verdict(
            14,
            "plain-HTTP req per proxy CPU-second with workers: 1 no worse than the last published "
            f"run ({base.get('stamp', 'none')}): median >= its slowest repetition",
            None if not verdicts else all(verdicts),
            "-" if not verdicts else ("every N" if all(verdicts) else "below at some N"),
            "; ".join(detail) if detail else "no baseline point at a tenant count of this run",
        )
    )

    one = stat(points, "nsproxy-w1", AT, "tls_idle_pss_kb")
    two = stat(points, NSPROXY_2, AT, "tls_idle_pss_kb")
    target = (
        f"summed PSS at {AT} tenants (HTTP + HTTPS) with workers: 2 <= {PSS_WORKERS2_VS_1}x "
        "workers: 1"
    )
    if one and two:
        http1 = stat(points, "nsproxy-w1", AT, "idle_pss_kb")
        http2 = stat(points, NSPROXY_2, AT, "idle_pss_kb")
        note = f"HTTP listeners only: {_mib(http2)} vs {_mib(http1)} ({http2 / http1:.2f}x)"
        h1 = stat(points, HAPROXY_1, AT, "tls_idle_pss_kb")
        h2 = stat(points, HAPROXY_2, AT, "tls_idle_pss_kb")
        if h1 and h2:
            note += f"; HAProxy nbthread 2/1: {_mib(h2)} vs {_mib(h1)} ({h2 / h1:.2f}x)"
        out.append(
            _verdict(
                14,
                target,
                two / one <= PSS_WORKERS2_VS_1,
                f"{two / one:.2f}x ({_mib(two)} vs {_mib(one)})",
                note,
            )
        )
    else:
        out.append(_verdict(14, target, None, "-", NEEDS_WORKERS))

    variants = sorted(
        {p["contender"] for p in points if p["kind"] == "nsproxy" and p["tenants"] == AT}
    )
    measured = [v for v in variants if stat(points, v, AT, "add_tenant_ms") is not None]
    for cid in measured or ["nsproxy-w1"]:
        target = f"adding a tenant to {AT} in < {ADD_MS} ms with 0 failed requests ({cid})"
        if cid not in measured:
            out.append(_verdict(14, target, None, "-", f"nsproxy's add not measured at {AT}"))
            continue
        parts, ok = [], True
        for prefix, config in (("", "HTTP"), ("tls_", "+TLS, own certificate")):
            add = stat(points, cid, AT, f"{prefix}add_tenant_ms")
            worst = stat(points, cid, AT, f"{prefix}add_tenant_ms", "max")
            failed = stat(points, cid, AT, f"{prefix}add_failed_requests", "max")
            ok = ok and add < ADD_MS and failed == 0
            parts.append(f"{config}: {_ms(add)} (worst {_ms(worst)}), {failed} failed")
        out.append(_verdict(14, target, ok, "; ".join(parts)))
    return out


# -- issue 3 ---------------------------------------------------------------------------------
def issue3(result: dict) -> list[dict]:
    """The first targets (memory per tenant, start, add, req per CPU-s against HAProxy), judged
    for both listener configurations on the workers: 1 variant."""
    points = result["points"]
    counts = sorted({p["tenants"] for p in points if p["kind"] == "nsproxy"})
    out = []
    for prefix, config in (("", "HTTP listener"), ("tls_", "HTTP + HTTPS listeners")):
        one = nsproxy_one(points, AT, f"{prefix}idle_rss_kb")
        rss = stat(points, one, AT, f"{prefix}idle_rss_kb")
        out.append(
            _verdict(
                3,
                f"idle RSS at {AT} tenants <= {RSS_1000_MIB} MiB ({config})",
                None if rss is None else rss / MIB <= RSS_1000_MIB,
                "-" if rss is None else _mib(rss),
                "" if rss is not None else f"nsproxy not measured at {AT}",
            )
        )
        ok = [n for n in counts if nsproxy_one(points, n, f"{prefix}idle_rss_kb")]
        target = f"idle RSS per added tenant <= {RSS_PER_TENANT_KB} kB ({config})"
        below = [n for n in ok if n <= AT]
        if len(below) >= 2:
            lo, hi = below[-2], below[-1]
            a = stat(
                points, nsproxy_one(points, lo, f"{prefix}idle_rss_kb"), lo, f"{prefix}idle_rss_kb"
            )
            b = stat(
                points, nsproxy_one(points, hi, f"{prefix}idle_rss_kb"), hi, f"{prefix}idle_rss_kb"
            )
            slope = (b - a) / (hi - lo)
            out.append(
                _verdict(
                    3,
                    target,
                    slope <= RSS_PER_TENANT_KB,
                    f"{slope:.2f} kB/tenant",
                    f"slope of the medians between {lo} and {hi} tenants",
                )
            )
        else:
            out.append(_verdict(3, target, None, "-", f"needs nsproxy at two counts up to {AT}"))
    ratios, detail = [], []
    for n in result["parameters"]["load_tenants"]:
        one = nsproxy_one(points, n, "http_req_per_cpu_s")
        mine = stat(points, one, n, "http_req_per_cpu_s")
        theirs = stat(points, HAPROXY_1, n, "http_req_per_cpu_s")
        if mine and theirs:
            ratios.append(mine / theirs)
            detail.append(f"N={n}: {mine:.0f} vs {theirs:.0f} ({mine / theirs:.2f}x)")
    out.append(
        _verdict(
            3,
            f"plain-HTTP req per proxy CPU-second >= {REQ_PER_CPU_VS_HAPROXY}x HAProxy's "
            "(workers 1 vs nbthread 1)",
            None if not ratios else min(ratios) >= REQ_PER_CPU_VS_HAPROXY,
            "-" if not ratios else f"{min(ratios):.2f}x (worst N)",
            "; ".join(detail) if detail else f"needs nsproxy and {HAPROXY_1} with load",
        )
    )
    return out


def baseline(path) -> dict:
    """What the targets compare with from a published result file: its stamp and nsproxy's
    plain-HTTP req per proxy CPU-s per tenant count (median, min, max)."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    per_n = {}
    for p in data["points"]:
        if p["contender"] in ("nsproxy", "nsproxy-w1") and p["status"] == "ok":
            s = p.get("summary", {}).get("http_req_per_cpu_s")
            if s:
                per_n[str(p["tenants"])] = {k: s[k] for k in ("median", "min", "max")}
    return {"stamp": Path(path).stem, "path": str(path), "http_req_per_cpu_s": per_n}
