#!/usr/bin/env python3
"""Benchmark nsproxy against HAProxy, nginx-per-namespace and the direct path.

One command does everything inside a throwaway network + mount namespace (tools/sandbox.py):
N tenant namespaces that all listen on 10.0.0.250, each with its own TLS certificate (cached
in bench/.cache), a backend nginx in the host namespace, each contender variant started in
turn, the load generators run inside tenant namespaces. Prints a table, writes
bench/results/<stamp>.json, .md and PNG charts, and judges nsproxy's targets.

    bench/run.py                                   # the defaults: see bench/README.md
    bench/run.py --nsproxy-workers 1,2             # with the binder/worker daemon
    bench/run.py --tenants 3 --duration 1 --repeat 1 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import certs, metrics_cost, report  # noqa: E402
from bench import targets as tg  # noqa: E402
from bench import topology as topo  # noqa: E402
from bench.contenders import (  # noqa: E402
    KINDS,
    Contender,
    ContenderError,
    Direct,
    HAProxy,
    NginxPerNetns,
    Nsproxy,
)
from bench.fields import METRICS_FIELDS, fields_for  # noqa: E402
from bench.harness import Harness  # noqa: E402

INSIDE_ENV = "NSPROXY_BENCH_IN_SANDBOX"
DEFAULT_BASELINE = REPO / "bench" / "results" / "2026-11-22T1021Z.json"
DEFAULT_CACHE = REPO / "bench" / ".cache" / "tls"


def _counts(p: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        p.error(f"{option}: expected comma-separated integers, got {text!r}")
    if counts and counts[0] < 1:
        p.error(f"{option}: every count must be at least 1")
    return counts


def _workers(p: argparse.ArgumentParser, text: str) -> list[int | str | None]:
    out: list[int | str | None] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "default":
            out.append(None)
        elif item == "auto" or (item.isdigit() and int(item) >= 1):
            out.append(item if item == "auto" else int(item))
        else:
            p.error(
                f"--nsproxy-workers: {item!r} is not allowed (use 'default', 'auto' or a "
                "count of at least 1, comma-separated)"
            )
    if not out:
        p.error("--nsproxy-workers: give at least one value")
    return list(dict.fromkeys(out))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tenants",
        default="10,100,1000,3000",
        help="tenant counts N where start and memory are measured (default 10,100,1000,3000)",
    )
    p.add_argument(
        "--load-tenants",
        default="10,100,1000",
        help="the N of --tenants where load, handshakes and a tenant add run too; others get "
        "start and memory only (default 10,100,1000)",
    )
    p.add_argument(
        "--scaling-tenants",
        default="100,1000",
        help="the N where variants with 2+ workers/threads run (default 100,1000)",
    )
    p.add_argument(
        "--metrics-tenants",
        default="1000",
        help="the N of --tenants where nsproxy's metrics cost per tenant is measured (each "
        "nsproxy variant; 2+ workers at --scaling-tenants only); empty: never (default 1000)",
    )
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="measure only nsproxy's metrics cost (no other contender, no load, no TLS)",
    )
    p.add_argument(
        "--metrics-settle",
        type=float,
        default=11.0,
        help="seconds between making every tenant busy and reading memory (default 11: the "
        "daemon tidies its heap after a burst at most every 10 s)",
    )
    p.add_argument(
        "--contenders",
        default=",".join(KINDS),
        help=f"comma-separated subset of {','.join(KINDS)} (default: all)",
    )
    p.add_argument(
        "--nsproxy-workers",
        default="default",
        help="nsproxy variants: comma-separated 'default' (no workers key in the config: the "
        "daemon's default), 'auto' or counts, e.g. 1,2 (default: default)",
    )
    p.add_argument(
        "--haproxy-nbthread",
        default="1,2",
        help="HAProxy variants: comma-separated nbthread values (default 1,2)",
    )
    p.add_argument(
        "--tls-key",
        choices=sorted(certs.KEY_TYPES),
        default="rsa2048",
        help="key type of every certificate, the same for every contender (default rsa2048)",
    )
    p.add_argument(
        "--shared-cert",
        action="store_true",
        help="one certificate for every tenant (the old variant) instead of one per tenant",
    )
    p.add_argument(
        "--cert-cache",
        default=str(DEFAULT_CACHE),
        help="where generated certificates are kept between runs (default bench/.cache/tls)",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per point (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--handshake-seconds",
        type=int,
        default=5,
        help="seconds of each handshake run, full and resumed (default 5)",
    )
    p.add_argument(
        "--handshake-clients",
        type=int,
        default=4,
        help="openssl s_time clients at once, one per tenant t0, t1, ... (default 4)",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds idle before idle memory (default 2)"
    )
    p.add_argument(
        "--add-window",
        type=int,
        default=4,
        help="seconds of load on t0 around the tenant add (default 4)",
    )
    p.add_argument(
        "--add-loop-connections",
        type=int,
        default=2,
        help="connections of the looping client (a new connection per request) during the "
        "add (default 2)",
    )
    p.add_argument(
        "--proxy-cpu", type=int, default=0, help="CPU of a 1-worker/thread proxy (default 0)"
    )
    p.add_argument(
        "--load-cpu",
        type=int,
        default=1,
        help="CPU of wrk, s_time, the backend and this harness (default 1)",
    )
    p.add_argument(
        "--nginx-max-tenants",
        type=int,
        default=1000,
        help=f"skip nginx above this many tenants (default 1000; at most {topo.MAX_VETHS - 1}); "
        "it is skipped below too when its estimated memory exceeds half of what is available",
    )
    p.add_argument(
        "--baseline",
        default=str(DEFAULT_BASELINE),
        help="published result file that req per CPU-s is compared with "
        "(default bench/results/2026-11-22T1021Z.json)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    p.add_argument(
        "--stamp",
        default=None,
        help="file name stem (default: UTC date and time, plus -shared-cert with --shared-cert)",
    )
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the configs and logs of the contenders (path printed at the end)",
    )
    args = p.parse_args(argv)
    args.tenant_counts = _counts(p, "--tenants", args.tenants)
    if not args.tenant_counts:
        p.error("--tenants: give at least one count")
    # the counts of --tenants that are also listed: `--tenants 100,1000` keeps the defaults
    load = _counts(p, "--load-tenants", args.load_tenants)
    scaling = _counts(p, "--scaling-tenants", args.scaling_tenants)
    args.load_counts = [n for n in args.tenant_counts if n in load]
    args.scaling_counts = [n for n in args.tenant_counts if n in scaling]
    metrics = _counts(p, "--metrics-tenants", args.metrics_tenants)
    args.metrics_counts = [n for n in args.tenant_counts if n in metrics]
    args.contender_kinds = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contender_kinds if c not in KINDS]
    if unknown:
        p.error(f"--contenders: unknown {', '.join(unknown)} (allowed: {', '.join(KINDS)})")
    if args.metrics_only:
        if "nsproxy" not in args.contender_kinds:
            p.error("--metrics-only measures nsproxy: keep it in --contenders")
        if not args.metrics_counts:
            p.error("--metrics-only: --metrics-tenants names none of the --tenants counts")
        args.contender_kinds = ["nsproxy"]
    args.workers = _workers(p, args.nsproxy_workers)
    args.nbthreads = _counts(p, "--haproxy-nbthread", args.haproxy_nbthread)
    if not args.nbthreads:
        p.error("--haproxy-nbthread: give at least one value")
    if args.metrics_settle < 0:
        p.error("--metrics-settle must be at least 0")
    if min(args.duration, args.repeat, args.add_window, args.handshake_seconds) < 1:
        p.error("--duration, --repeat, --add-window and --handshake-seconds must be at least 1")
    if args.handshake_clients < 1 or args.add_loop_connections < 1:
        p.error("--handshake-clients and --add-loop-connections must be at least 1")
    if not 0 <= args.nginx_max_tenants < topo.MAX_VETHS:
        p.error(
            f"--nginx-max-tenants: at most {topo.MAX_VETHS - 1} (each nginx tenant needs a veth "
            "into one bridge, which takes 1024 ports)"
        )
    ncpu = os.cpu_count() or 1
    for name in ("proxy_cpu", "load_cpu"):
        if not 0 <= getattr(args, name) < ncpu:
            p.error(f"--{name.replace('_', '-')}: this machine has CPUs 0..{ncpu - 1}")
    if not args.stamp:
        args.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
        args.stamp += "-shared-cert" * args.shared_cert
    return args


# -- variants and where they run -------------------------------------------------------------
def proxy_cpus(args: argparse.Namespace, threads: int) -> list[int]:
    """CPUs a proxy with ``threads`` workers/threads is pinned to. One: ``--proxy-cpu`` alone,
    the load generator has ``--load-cpu``. More: that many CPUs other than the load CPU when the
    machine has them, else every CPU (the load generator then competes; the JSON says so)."""
    if threads <= 1:
        return [args.proxy_cpu]
    ncpu = os.cpu_count() or 1
    own = [args.proxy_cpu] + [c for c in range(ncpu) if c not in (args.proxy_cpu, args.load_cpu)]
    return sorted(own[:threads]) if len(own) >= threads else list(range(ncpu))


def make_variants(args, workdir: Path, store: certs.CertStore) -> list[Contender]:
    ncpu = os.cpu_count() or 1
    out: list[Contender] = []
    for kind in args.contender_kinds:
        if kind == "nsproxy":
            for w in args.workers:
                threads = ncpu if w == "auto" else (w or 1)
                out.append(Nsproxy(workdir, store, proxy_cpus(args, threads), w))
        elif kind == "haproxy":
            for t in args.nbthreads:
                out.append(HAProxy(workdir, store, proxy_cpus(args, t), t))
        elif kind == "nginx":
            out.append(NginxPerNetns(workdir, store, [args.proxy_cpu]))
        else:
            out.append(Direct(workdir, store, None))
    return out


def skip_reason(args, c: Contender, n: int, points: list[dict]) -> str | None:
    reason = c.available()
    if reason:
        return reason
    if not c.is_proxy and n not in args.load_counts:
        return "the direct path has no listeners: it runs only at --load-tenants"
    if c.threads > 1 and n not in args.scaling_counts:
        return f"{c.threads} workers/threads run only at --scaling-tenants {args.scaling_tenants}"
    if c.kind == "nginx":
        return nginx_skip_reason(args, n, points)
    return None


def nginx_skip_reason(args, n: int, points: list[dict]) -> str | None:
    if n > args.nginx_max_tenants:
        return f"above --nginx-max-tenants {args.nginx_max_tenants}"
    # What the instances really occupy is their PSS (shared pages counted once); twice the
    # idle figure leaves room for the loaded instance and the kernel's per-socket memory.
    per_tenant_kb = 4000.0
    measured = [
        p
        for p in points
        if p["contender"] == "nginx" and p.get("summary", {}).get("tls_idle_pss_kb")
    ]
    if measured:
        last = measured[-1]
        per_tenant_kb = last["summary"]["tls_idle_pss_kb"]["median"] / last["tenants"]
    with open("/proc/meminfo") as f:
        avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    need = per_tenant_kb * (n + 1) * 2
    if need > avail_kb / 2:
        return (
            f"{n} nginx instances would need about {need / 2**20:.1f} GiB (twice their "
            f"measured PSS), more than half of the {avail_kb / 2**20:.1f} GiB available"
        )
    return None


def nginx_veths(args) -> int:
    """How many tenants get a veth: those nginx may serve, plus the one it adds."""
    if "nginx" not in args.contender_kinds:
        return 0
    served = [n for n in args.tenant_counts if n <= args.nginx_max_tenants]
    return max(served) + 1 if served else 0


# -- the result document ---------------------------------------------------------------------
def machine_info(contenders: list[Contender]) -> dict:
    model, cores = "", os.cpu_count()
    with contextlib.suppress(OSError, StopIteration):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {c.kind: c.version() for c in contenders if c.version()}
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()
    versions["wrk"] = wrk[1] if len(wrk) > 1 else ""
    versions["openssl"] = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True
    ).stdout.strip()
    with contextlib.suppress(Exception):
        from importlib import metadata

        versions["uvloop"] = metadata.version("uvloop")
        versions["httptools"] = metadata.version("httptools")
        versions["cryptography"] = metadata.version("cryptography")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpus": cores,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _os_release() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def _in_sandbox() -> bool:
    """Whether /run is the private tmpfs that tools/sandbox.py mounts."""
    with open("/proc/self/mountinfo") as f:
        return any(
            line.split()[4] == "/run" and "tenantnet-run" in line.split(" - ", 1)[1] for line in f
        )


def assemble(
    args, run: dict, variants: list[Contender], points, complete: bool, metrics_points=()
) -> dict:
    """The result document: machine, parameters, points, target verdicts."""
    result = {
        "started": run["started"].isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - run["t0"], 1),
        "loadavg_at_end": _loadavg(),
        "complete": complete,
        "machine": run["machine"],
        "setup": run["setup"],
        "parameters": {
            "tenant_counts": args.tenant_counts,
            "load_tenants": args.load_counts,
            "scaling_tenants": args.scaling_counts,
            "metrics_tenants": args.metrics_counts,
            "metrics_only": args.metrics_only,
            "metrics_settle_s": args.metrics_settle,
            "contenders": args.contender_kinds,
            "variants": [c.id for c in variants],
            "variant_details": [
                {
                    "id": c.id,
                    "kind": c.kind,
                    "label": c.label,
                    "setting": c.setting,
                    "threads": c.threads,
                    "cpus": ",".join(map(str, c.cpus)) if c.cpus else "any",
                    "shares_load_cpu": bool(c.cpus) and args.load_cpu in c.cpus,
                }
                for c in variants
            ],
            "tls": {
                "key_type": args.tls_key,
                "shared": args.shared_cert,
                "label": run["store"].label,
                "chain": "leaf + CA certificate (full chain), key in its own file",
            },
            "duration_s": args.duration,
            "repeat": args.repeat,
            "connections": args.connections,
            "wrk_threads": 1,
            "handshake_seconds": args.handshake_seconds,
            "handshake_clients": args.handshake_clients,
            "settle_s": args.settle,
            "add_window_s": args.add_window,
            "add_loop_connections": args.add_loop_connections,
            "proxy_cpu": args.proxy_cpu,
            "load_cpu": args.load_cpu,
            "listen": f"{topo.LISTEN_ADDR}:{topo.HTTP_PORT} (http), :{topo.HTTPS_PORT} (https)",
            "add_methods": {c.id: c.add_method for c in variants if c.add_method},
        },
        "baseline": run["baseline"],
        "points": points,
        "metrics_cost": list(metrics_points),
    }
    result["targets"] = tg.evaluate(result)
    return result


# -- the run ---------------------------------------------------------------------------------
def run_inside(args: argparse.Namespace) -> int:
    if not _in_sandbox():
        print("bench: refusing to build tenants in the machine's own namespace", file=sys.stderr)
        return 2
    run: dict = {"t0": time.monotonic(), "started": dt.datetime.now(dt.timezone.utc)}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # before pinning: key generation uses every CPU
    try:
        if args.metrics_only:  # no TLS listener: the backend's certificate only
            store, made = certs.ensure(Path(args.cert_cache), args.tls_key, 0, True)
        else:
            store, made = certs.ensure(
                Path(args.cert_cache), args.tls_key, max(args.tenant_counts) + 1, args.shared_cert
            )
    except certs.CertError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(
        f"# TLS: {store.label}; {made['generated']} generated in {made['seconds']:.1f} s, "
        f"{made['reused']} reused from {made['directory']}",
        flush=True,
    )
    os.sched_setaffinity(0, {args.load_cpu})
    run["store"] = store
    run["baseline"] = None
    if args.baseline:
        try:
            run["baseline"] = tg.baseline(args.baseline)
        except (OSError, ValueError, KeyError) as exc:
            print(f"# baseline {args.baseline} not read: {exc}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="nsproxy-bench-"))
    harness = Harness(args, workdir, store)
    variants = make_variants(args, workdir, store)
    points: list[dict] = []
    metrics_points: list[dict] = []
    try:
        built = harness.setup(max(args.tenant_counts) + 1, nginx_veths(args))
        print(f"# {len(harness.tenants)} tenant namespaces built in {built:.1f} s", flush=True)
        run["setup"] = {"certificates": made, "namespaces_s": round(built, 1)}
        run["machine"] = machine_info(variants)
        for n in args.tenant_counts:
            if n in args.metrics_counts:
                metrics_points += measure_metrics(args, harness, variants, n, workdir)
            if args.metrics_only:
                partial = assemble(args, run, variants, points, False, metrics_points)
                json_path.write_text(json.dumps(partial, indent=1) + "\n")
                continue
            with_load = n in args.load_counts
            live = {}
            for c in variants:
                point = {
                    "contender": c.id,
                    "kind": c.kind,
                    "tenants": n,
                    "with_load": with_load,
                    "status": "ok",
                    "reason": None,
                    "samples": [],
                    "seconds": [],
                }
                reason = skip_reason(args, c, n, points)
                if reason:
                    point.update(status="skipped", reason=reason)
                else:
                    live[c.id] = (c, point)
                points.append(point)
            for rep in range(args.repeat):
                for c, point in live.values():
                    if point["status"] != "ok":
                        continue
                    t = time.monotonic()
                    try:
                        sample = harness.measure_once(c, n, with_load)
                    except Exception as exc:  # one broken point must not lose the whole run
                        if not isinstance(exc, (ContenderError, TimeoutError)):
                            traceback.print_exc()
                        point.update(status="failed", reason=str(exc)[-2000:])
                        print(f"! {c.id} at {n} tenants failed: {exc}", file=sys.stderr)
                        continue
                    finally:
                        c.stop()
                        harness.kill_tenant_processes()
                    point["samples"].append(sample)
                    point["seconds"].append(round(time.monotonic() - t, 1))
                    print(
                        f"# {c.id:11} N={n:<5} rep {rep + 1}/{args.repeat} "
                        f"({time.monotonic() - t:.0f} s) " + report.one_line(sample),
                        flush=True,
                    )
            for c, point in live.values():
                point["fields"] = fields_for(c.is_proxy, with_load)
                point["summary"] = report.summarise(point["samples"], point["fields"])
            # a checkpoint, so that an interrupted long run still leaves what it measured
            partial = assemble(args, run, variants, points, False, metrics_points)
            json_path.write_text(json.dumps(partial, indent=1) + "\n")
    finally:
        for c in variants:
            c.stop()
        harness.close()
        if args.keep_workdir:
            print(f"# configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result = assemble(args, run, variants, points, True, metrics_points)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(report.table(result))
    print(f"\nresults: {json_path}")
    chart_paths = []
    if not args.no_charts and points:
        from bench.charts import charts

        chart_paths = charts(result, out, args.stamp)
        for path in chart_paths:
            print(f"chart:   {path}")
    md = out / f"{args.stamp}.md"
    md.write_text(report.markdown(result, [str(x) for x in chart_paths]))
    print(f"tables:  {md}")
    print(f"# whole run {result['duration_s'] / 60:.1f} min")
    return 1 if any(p["status"] == "failed" for p in [*points, *metrics_points]) else 0


def measure_metrics(args, harness: Harness, variants, n: int, workdir: Path) -> list[dict]:
    """The metrics cost of every nsproxy variant at ``n`` tenants (bench/metrics_cost.py),
    ``--repeat`` times; one point per variant."""
    out = []
    for c in variants:
        if c.kind != "nsproxy":
            continue
        point = {"contender": c.id, "tenants": n, "status": "ok", "reason": None, "samples": []}
        point["reason"] = skip_reason(args, c, n, [])
        if point["reason"]:
            point["status"] = "skipped"
            out.append(point)
            continue
        probed = metrics_cost.ProbedNsproxy(c, workdir / "metrics-cost")
        for rep in range(args.repeat):
            t = time.monotonic()
            try:
                sample = metrics_cost.measure_once(
                    harness.namespaces,
                    probed,
                    harness.tenants[:n],
                    args.settle,
                    args.metrics_settle,
                    harness.kill_tenant_processes,
                )
            except Exception as exc:
                if not isinstance(exc, (ContenderError, TimeoutError, OSError)):
                    traceback.print_exc()
                point.update(status="failed", reason=str(exc)[-2000:])
                print(f"! metrics cost of {c.id} at {n} tenants failed: {exc}", file=sys.stderr)
                break
            finally:
                probed.stop()
                harness.kill_tenant_processes()
            point["samples"].append(sample)
            print(
                f"# metrics {c.id:11} N={n:<5} rep {rep + 1}/{args.repeat} "
                f"({time.monotonic() - t:.0f} s) " + report.metrics_line(sample),
                flush=True,
            )
        point["fields"] = METRICS_FIELDS
        point["summary"] = report.summarise(point["samples"], METRICS_FIELDS)
        out.append(point)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get(INSIDE_ENV) == "1":
        return run_inside(args)
    if os.geteuid() != 0:
        print("bench: needs root (it creates network and mount namespaces)", file=sys.stderr)
        return 2
    from tools.sandbox import Sandbox, SandboxError

    try:
        with Sandbox() as sandbox:
            env = {**os.environ, INSIDE_ENV: "1"}
            given = sys.argv[1:] if argv is None else argv
            command = [sys.executable, str(Path(__file__).resolve()), *given]
            return sandbox.run(command, check=False, capture_output=False, env=env).returncode
    except SandboxError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
