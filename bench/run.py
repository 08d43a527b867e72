#!/usr/bin/env python3
"""Benchmark nsproxy against HAProxy, nginx-per-namespace and the direct path.

One command does everything inside a throwaway network + mount namespace (tools/sandbox.py):
N tenant namespaces that all listen on 10.0.0.250, a backend nginx in the host namespace,
each contender started in turn, wrk run inside tenant t0. Prints a table, writes
bench/results/<stamp>.json and PNG charts, and says whether nsproxy meets its targets.

    bench/run.py                                   # N = 10, 100, 1000; 3 repetitions; 10 s loads
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
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import measure, report  # noqa: E402
from bench import topology as topo  # noqa: E402
from bench.contenders import ALL, Backend, Contender, ContenderError  # noqa: E402
from bench.netns import Namespaces, wait_listening  # noqa: E402

INSIDE_ENV = "NSPROXY_BENCH_IN_SANDBOX"

# Fields every proxy point has; the direct path has only the load ones (no proxy to measure).
LOAD_FIELDS = [f"{v}_{f}" for v in ("http", "https") for f in ("rps", "p50_ms", "p99_ms", "failed")]
# Measured twice per proxy: with an HTTP listener per tenant, and ("tls_") with an HTTPS one too.
CONFIG_FIELDS = [
    "listen_all_s",
    "listen_cpu_s",
    "idle_rss_kb",
    "idle_pss_kb",
    "load_rss_kb",
    "processes",
    "add_tenant_ms",
    "add_failed_requests",
    "add_requests",
]
PROXY_FIELDS = [
    *CONFIG_FIELDS,
    *(f"tls_{f}" for f in CONFIG_FIELDS),
    *LOAD_FIELDS,
    "http_proxy_cpu_s",
    "http_proxy_cpu_share",
    "http_req_per_cpu_s",
    "https_proxy_cpu_s",
    "https_proxy_cpu_share",
    "https_req_per_cpu_s",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tenants",
        default="10,100,1000",
        help="comma-separated tenant counts (default 10,100,1000)",
    )
    p.add_argument(
        "--contenders",
        default=",".join(ALL),
        help=f"comma-separated subset of {','.join(ALL)} (default: all)",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per point (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds idle before idle RSS (default 2)"
    )
    p.add_argument(
        "--add-window",
        type=int,
        default=4,
        help="seconds of load on t0 around the tenant add (default 4)",
    )
    p.add_argument("--proxy-cpu", type=int, default=0, help="CPU the proxies run on (default 0)")
    p.add_argument(
        "--load-cpu",
        type=int,
        default=1,
        help="CPU of wrk, the backend and this harness (default 1)",
    )
    p.add_argument(
        "--nginx-max-tenants",
        type=int,
        default=None,
        help="skip nginx above this many tenants (default: skip only when the estimated "
        "memory exceeds half of what is available)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    p.add_argument("--stamp", default=None, help="file name stem (default: UTC date and time)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the configs and logs of the contenders (path printed at the end)",
    )
    args = p.parse_args(argv)
    try:
        args.tenant_counts = sorted({int(x) for x in args.tenants.split(",") if x.strip()})
    except ValueError:
        p.error(f"--tenants: expected comma-separated integers, got {args.tenants!r}")
    if not args.tenant_counts or args.tenant_counts[0] < 1:
        p.error("--tenants: every count must be at least 1")
    args.contender_names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contender_names if c not in ALL]
    if unknown:
        p.error(f"--contenders: unknown {', '.join(unknown)} (allowed: {', '.join(ALL)})")
    if args.duration < 1 or args.repeat < 1 or args.add_window < 1:
        p.error("--duration, --repeat and --add-window must be at least 1")
    ncpu = os.cpu_count() or 1
    for name in ("proxy_cpu", "load_cpu"):
        if not 0 <= getattr(args, name) < ncpu:
            p.error(f"--{name.replace('_', '-')}: this machine has CPUs 0..{ncpu - 1}")
    args.stamp = args.stamp or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    return args


# -- one measurement -----------------------------------------------------------------------
class Harness:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.namespaces = Namespaces()
        self.cert, self.key = workdir / "cert.pem", workdir / "key.pem"

    def setup(self) -> list[str]:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bench.example",
                "-addext",
                f"subjectAltName=DNS:bench.example,IP:{topo.LISTEN_ADDR},IP:127.0.0.1",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
        )
        t = time.monotonic()
        self.tenants = topo.build(max(self.args.tenant_counts) + 1, self.namespaces)
        print(f"# {len(self.tenants)} tenant namespaces built in {time.monotonic() - t:.1f} s")
        self.backend = Backend(self.workdir, self.cert, self.key, self.args.load_cpu)
        self.backend.start()
        wait_listening(
            self.namespaces,
            [
                (None, "127.0.0.1", topo.BACKEND_PORT),
                (None, "127.0.0.1", topo.BACKEND_TLS_PORT),
                (None, topo.BRIDGE_ADDR, topo.BACKEND_PORT),
            ],
            timeout=30,
        )
        return self.tenants

    def load(self, contender: Contender, tls: bool, seconds: int) -> tuple[dict, int]:
        """One wrk run against the contender; returns its fields and the peak RSS (kB)."""
        netns, url = contender.target(tls, self.tenants[0])
        argv = measure.wrk_command(url, seconds, self.args.connections, self.args.load_cpu, netns)
        pids = measure.process_tree(contender.roots())
        backend_pids = measure.process_tree(self.backend.roots())
        cpu0, backend0 = measure.cpu_seconds(pids), measure.cpu_seconds(backend_pids)
        host0, t0 = measure.host_cpu_busy(), time.monotonic()
        with measure.RssSampler(pids) as sampler:
            result = measure.run_wrk(argv)
        wall = time.monotonic() - t0
        cpu = measure.cpu_seconds(pids) - cpu0
        host = [(b - a) / wall for a, b in zip(host0, measure.host_cpu_busy())]
        v = "https" if tls else "http"
        fields = {
            f"{v}_rps": result.rps,
            f"{v}_p50_ms": result.p50_ms,
            f"{v}_p99_ms": result.p99_ms,
            f"{v}_failed": result.failed,
            f"{v}_socket_errors": result.socket_errors,
            f"{v}_non_2xx": result.non_2xx,
            f"{v}_requests": result.requests,
            f"{v}_backend_cpu_s": measure.cpu_seconds(backend_pids) - backend0,
            f"{v}_host_cpu_busy": [round(x, 3) for x in host],
        }
        if contender.is_proxy:
            fields[f"{v}_proxy_cpu_s"] = cpu
            fields[f"{v}_proxy_cpu_share"] = round(cpu / wall, 3)
            fields[f"{v}_req_per_cpu_s"] = result.requests / cpu if cpu > 0 else None
        return fields, sampler.peak

    def measure_once(self, contender: Contender, n: int) -> dict:
        """One repetition: for a proxy, two starts (HTTP listeners only, then HTTP + TLS), each
        with start time, idle RSS, one load run and a tenant add; for direct, the two loads."""
        sample: dict = {}
        if not contender.is_proxy:
            self.check_answers(contender, [])
            for tls in (False, True):
                sample.update(self.load(contender, tls, self.args.duration)[0])
            return sample
        tenants, extra = self.tenants[:n], self.tenants[n]
        for tls in (False, True):
            prefix = "tls_" if tls else ""
            t0 = time.monotonic()
            contender.start(tenants, tls)
            try:
                try:
                    accepted = wait_listening(
                        self.namespaces,
                        contender.listen_targets(tenants),
                        timeout=60 + n * 0.1,
                        alive=contender.check_alive,
                    )
                except TimeoutError as exc:
                    raise ContenderError(f"{contender.name}: {exc}") from None
                sample[f"{prefix}listen_all_s"] = max(accepted.values()) - t0
                # CPU spent getting there: unlike the wall time, not inflated by other load
                sample[f"{prefix}listen_cpu_s"] = measure.cpu_seconds(
                    measure.process_tree(contender.roots())
                )
                time.sleep(self.args.settle)
                contender.check_alive()
                pids = measure.process_tree(contender.roots())
                sample[f"{prefix}idle_rss_kb"] = measure.rss_kb(pids)
                sample[f"{prefix}idle_pss_kb"] = measure.pss_kb(pids)
                sample[f"{prefix}processes"] = len(pids)
                self.check_answers(contender, tenants)
                fields, peak = self.load(contender, tls, self.args.duration)
                sample.update(fields)
                sample[f"{prefix}load_rss_kb"] = peak
                contender.check_alive()
                self.add_tenant(contender, [*tenants, extra], sample, prefix)
            finally:
                contender.stop()
                self.kill_tenant_processes()
        return sample

    def check_answers(self, contender: Contender, tenants: list[str]) -> None:
        """Before timing anything: the first and last tenant get the backend's answer, with
        their own tenant name forwarded (HTTP and TLS)."""
        probes = sorted({tenants[0], tenants[-1]}) if contender.is_proxy else [None]
        variants = (False, True) if contender.tls or not contender.is_proxy else (False,)
        for tenant in probes:
            for tls in variants:
                netns, url = contender.target(tls, tenant or self.tenants[0])
                argv = ["curl", "-sS", "-k", "--max-time", "10", url]
                if netns:
                    argv = ["ip", "netns", "exec", netns, *argv]
                got = subprocess.run(argv, capture_output=True, text=True)
                want = f"ok {tenant or ''}".strip()
                if got.returncode != 0 or got.stdout.strip() != want:
                    raise ContenderError(
                        f"{contender.name}: {url} from {netns or 'host'} answered "
                        f"{(got.stdout + got.stderr).strip()[:300]!r}, expected {want!r}"
                    )

    def add_tenant(self, contender: Contender, grown: list[str], sample: dict, prefix: str) -> None:
        """Grow the running contender by one tenant while t0 is under load. The load starts
        ``--add-window``/3 s before the add and goes on until ``--add-window``*2/3 s after the
        new tenant accepts, however long the add takes (wrk stops on SIGINT and reports)."""
        netns, url = contender.target(False, self.tenants[0])
        window = self.args.add_window
        argv = measure.wrk_command(url, 900, self.args.connections, self.args.load_cpu, netns)
        contender.prepare_add(grown)
        wrk = measure.start_wrk(argv)
        try:
            time.sleep(window / 3)
            t0 = time.monotonic()
            contender.trigger_add()
            accepted = wait_listening(
                self.namespaces,
                contender.listen_targets(grown[-1:]),
                timeout=120,
                alive=contender.check_alive,
            )
            sample[f"{prefix}add_tenant_ms"] = (max(accepted.values()) - t0) * 1000
            time.sleep(window * 2 / 3)
        finally:
            result = measure.finish_wrk(wrk, interrupt=True)
        sample[f"{prefix}add_failed_requests"] = result.failed
        sample[f"{prefix}add_requests"] = result.requests
        sample[f"{prefix}add_socket_errors"] = result.socket_errors
        sample[f"{prefix}add_non_2xx"] = result.non_2xx

    # -- cleanup ------------------------------------------------------------------------
    def kill_tenant_processes(self) -> None:
        """Kill whatever still runs inside our tenant namespaces (we started all of it)."""
        inodes = set()
        for name in getattr(self, "tenants", []):
            with contextlib.suppress(OSError):
                inodes.add(self.namespaces.inode(name))
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue

    def close(self) -> None:
        if hasattr(self, "backend"):
            self.backend.stop()
        self.kill_tenant_processes()
        self.namespaces.close()


def nginx_skip_reason(args, n: int, points: list[dict]) -> str | None:
    if args.nginx_max_tenants is not None and n > args.nginx_max_tenants:
        return f"above --nginx-max-tenants {args.nginx_max_tenants}"
    # What the instances really occupy is their PSS (shared pages counted once); twice the
    # idle figure leaves room for the loaded instance and the kernel's per-socket memory.
    per_tenant_kb = 4000.0
    measured = [
        p for p in points if p["contender"] == "nginx" and p.get("summary", {}).get("idle_pss_kb")
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


def machine_info(contenders: dict[str, Contender]) -> dict:
    model, cores = "", os.cpu_count()
    with contextlib.suppress(OSError, StopIteration):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {name: c.version() for name, c in contenders.items() if c.version()}
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()
    versions["wrk"] = wrk[1] if len(wrk) > 1 else ""
    with contextlib.suppress(Exception):
        from importlib import metadata

        versions["uvloop"] = metadata.version("uvloop")
        versions["httptools"] = metadata.version("httptools")
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
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


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


def assemble(args, started, info, contenders, points, complete: bool) -> dict:
    """The result document: machine, parameters, points, target verdicts and ratios."""
    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "machine": info,
        "parameters": {
            "tenant_counts": args.tenant_counts,
            "contenders": args.contender_names,
            "duration_s": args.duration,
            "repeat": args.repeat,
            "connections": args.connections,
            "wrk_threads": 1,
            "settle_s": args.settle,
            "add_window_s": args.add_window,
            "proxy_cpu": args.proxy_cpu,
            "load_cpu": args.load_cpu,
            "listen": f"{topo.LISTEN_ADDR}:{topo.HTTP_PORT} (http), :{topo.HTTPS_PORT} (https)",
            "add_methods": {n: c.add_method for n, c in contenders.items() if c.add_method},
        },
        "points": points,
    }
    result["targets"] = report.evaluate_targets(points)
    result["ratios"] = report.ratios(points)
    return result


def run_inside(args: argparse.Namespace) -> int:
    if not _in_sandbox():
        print("bench: refusing to build tenants in the machine's own namespace", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {args.load_cpu})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="nsproxy-bench-"))
    harness = Harness(args, workdir)
    contenders = {
        name: ALL[name](workdir, harness.cert, harness.key, args.proxy_cpu)
        for name in args.contender_names
    }
    points: list[dict] = []
    started = dt.datetime.now(dt.timezone.utc)
    try:
        harness.setup()
        info = machine_info(contenders)
        for n in args.tenant_counts:
            live = {}
            for name, c in contenders.items():
                point = {"contender": name, "tenants": n, "status": "ok", "reason": None}
                point["samples"] = []
                reason = c.available()
                if name == "nginx" and not reason:
                    reason = nginx_skip_reason(args, n, points)
                if reason:
                    point.update(status="skipped", reason=reason)
                else:
                    live[name] = point
                points.append(point)
            for rep in range(args.repeat):
                for name, point in live.items():
                    if point["status"] != "ok":
                        continue
                    c = contenders[name]
                    t = time.monotonic()
                    try:
                        sample = harness.measure_once(c, n)
                    except Exception as exc:  # one broken point must not lose the whole run
                        if not isinstance(exc, (ContenderError, TimeoutError)):
                            traceback.print_exc()
                        point.update(status="failed", reason=str(exc)[-2000:])
                        print(f"! {name} at {n} tenants failed: {exc}", file=sys.stderr)
                        continue
                    finally:
                        c.stop()
                        harness.kill_tenant_processes()
                    point["samples"].append(sample)
                    print(
                        f"# {name:8} N={n:<5} rep {rep + 1}/{args.repeat} "
                        f"({time.monotonic() - t:.0f} s) " + report.one_line(sample),
                        flush=True,
                    )
            for point in points:
                if point["tenants"] == n:
                    fields = PROXY_FIELDS if ALL[point["contender"]].is_proxy else LOAD_FIELDS
                    point["fields"] = fields
                    point["summary"] = report.summarise(point["samples"], fields)
                    if not ALL[point["contender"]].is_proxy:
                        point["not_applicable"] = sorted(set(PROXY_FIELDS) - set(fields))
            # a checkpoint, so that an interrupted long run still leaves what it measured
            partial = assemble(args, started, info, contenders, points, complete=False)
            json_path.write_text(json.dumps(partial, indent=1) + "\n")
    finally:
        for c in contenders.values():
            c.stop()
        harness.close()
        if args.keep_workdir:
            print(f"# configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result = assemble(args, started, info, contenders, points, complete=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{args.stamp}.md").write_text(report.markdown(result))
    print(report.table(result))
    print(f"\nresults: {json_path}")
    if not args.no_charts:
        for path in report.charts(result, out, args.stamp):
            print(f"chart:   {path}")
    return 1 if any(p["status"] == "failed" for p in points) else 0


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
