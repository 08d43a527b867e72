"""One measurement of one contender at one tenant count: start, memory, load, handshakes and a
tenant add, inside the sandbox the runner built (tenant namespaces and the backend).

See bench/README.md ("Figures and how each is measured") for the definition of every field.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bench import loadgen, measure
from bench import topology as topo
from bench.certs import CertStore
from bench.contenders import Backend, Contender, ContenderError
from bench.netns import Namespaces, wait_listening


class Harness:
    """The tenants, the backend and the measurements run against them."""

    def __init__(self, args: argparse.Namespace, workdir: Path, certs: CertStore):
        self.args = args
        self.workdir = workdir
        self.certs = certs
        self.namespaces = Namespaces()
        self.tenants: list[str] = []

    def setup(self, count: int, veths: int) -> float:
        """Build ``count`` tenant namespaces (the first ``veths`` with a veth) and start the
        backend; returns the seconds the namespaces took."""
        t = time.monotonic()
        self.tenants = topo.build(count, self.namespaces, veths)
        built = time.monotonic() - t
        self.backend = Backend(self.workdir, self.certs, self.args.load_cpu)
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
        return built

    # -- one repetition ------------------------------------------------------------------
    def measure_once(self, contender: Contender, n: int, with_load: bool) -> dict:
        """One repetition. A proxy is started twice (HTTP listeners only, then HTTP + HTTPS),
        each time measured for start and idle memory and, ``with_load``, a load run, for TLS the
        handshake runs, and a tenant add. The direct path has the two loads only."""
        sample: dict = {}
        if not contender.is_proxy:
            self.check_answers(contender, [], tls=True)
            for tls in (False, True):
                sample.update(self.load(contender, tls, self.args.duration)[0])
            return sample
        tenants, extra = self.tenants[:n], self.tenants[n]
        for tls in (False, True):
            prefix = "tls_" if tls else ""
            contender.prepare(tenants, tls)  # config written and checked before the timer
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
                    raise ContenderError(f"{contender.id}: {exc}") from None
                sample[f"{prefix}listen_all_s"] = max(accepted.values()) - t0
                # CPU spent getting there: unlike the wall time, not inflated by other load
                sample[f"{prefix}listen_cpu_s"] = measure.cpu_seconds(
                    measure.process_tree(contender.roots())
                )
                time.sleep(self.args.settle)
                contender.check_alive()
                pids = measure.process_tree(contender.roots())
                rss, pss = measure.memory_kb(pids)
                sample[f"{prefix}idle_rss_kb"] = rss
                sample[f"{prefix}idle_pss_kb"] = pss
                sample[f"{prefix}processes"] = len(pids)
                self.check_answers(contender, tenants, tls)
                if not with_load:
                    continue
                fields, peak = self.load(contender, tls, self.args.duration)
                sample.update(fields)
                sample[f"{prefix}load_rss_kb"] = peak
                contender.check_alive()
                if tls:
                    sample.update(self.handshakes(contender, tenants))
                    contender.check_alive()
                self.add_tenant(contender, [*tenants, extra], sample, prefix)
                # the new tenant answers, over TLS with its own certificate
                self.check_answers(contender, [extra], tls)
            finally:
                contender.stop()
                self.kill_tenant_processes()
        return sample

    def check_answers(self, contender: Contender, tenants: list[str], tls: bool) -> None:
        """Before timing anything: the first and last tenant get the backend's answer, with
        their own tenant name forwarded. Over TLS the client checks the certificate against the
        benchmark's CA for the tenant's own name (t<I>.bench.example), so a tenant served with
        another tenant's certificate fails here."""
        if not contender.is_proxy:
            for secure in (False, True):
                _, url = contender.target(secure, self.tenants[0])
                self._expect(None, ["-k", url], "ok")
            return
        for tenant in sorted({tenants[0], tenants[-1]}):
            _, url = contender.target(False, tenant)
            self._expect(tenant, [url], f"ok {tenant}")
            if tls:
                host = self.certs.for_tenant(tenant).hostname
                argv = [
                    "--cacert",
                    str(self.certs.ca),
                    "--resolve",
                    f"{host}:{topo.HTTPS_PORT}:{topo.LISTEN_ADDR}",
                    f"https://{host}:{topo.HTTPS_PORT}/",
                ]
                self._expect(tenant, argv, f"ok {tenant}")

    def _expect(self, netns: str | None, curl_args: list[str], want: str) -> None:
        argv = ["curl", "-sS", "--max-time", "10", *curl_args]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        got = subprocess.run(argv, capture_output=True, text=True)
        if got.returncode != 0 or got.stdout.strip() != want:
            raise ContenderError(
                f"{curl_args[-1]} from {netns or 'host'} answered "
                f"{(got.stdout + got.stderr).strip()[:300]!r}, expected {want!r}"
            )

    # -- load ----------------------------------------------------------------------------
    def load(self, contender: Contender, tls: bool, seconds: int) -> tuple[dict, int]:
        """One wrk run against the contender; returns its fields and the peak RSS (kB)."""
        netns, url = contender.target(tls, self.tenants[0])
        argv = loadgen.wrk_command(url, seconds, self.args.connections, self.args.load_cpu, netns)
        pids = measure.process_tree(contender.roots())
        backend_pids = measure.process_tree(self.backend.roots())
        cpu0, backend0 = measure.cpu_seconds(pids), measure.cpu_seconds(backend_pids)
        threads0 = measure.thread_cpu_seconds(pids)
        wrk0 = measure.children_cpu_seconds()
        host0, t0 = measure.host_cpu_busy(), time.monotonic()
        with measure.RssSampler(pids) as sampler:
            result = loadgen.run_wrk(argv)
        wall = time.monotonic() - t0
        cpu = measure.cpu_seconds(pids) - cpu0
        busiest = measure.busiest_thread_seconds(threads0, measure.thread_cpu_seconds(pids))
        wrk_cpu = measure.children_cpu_seconds() - wrk0
        backend_cpu = measure.cpu_seconds(backend_pids) - backend0
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
            f"{v}_backend_cpu_s": backend_cpu,
            f"{v}_loadgen_cpu_s": round(wrk_cpu, 3),
            f"{v}_load_cpu_share": round((wrk_cpu + backend_cpu) / wall, 3),
            f"{v}_host_cpu_busy": [round(x, 3) for x in host],
        }
        if contender.is_proxy:
            fields[f"{v}_proxy_cpu_s"] = cpu
            fields[f"{v}_proxy_cpu_share"] = round(cpu / wall, 3)
            fields[f"{v}_req_per_cpu_s"] = result.requests / cpu if cpu > 0 else None
            fields[f"{v}_busiest_thread_cpu_s"] = busiest
            fields[f"{v}_req_per_busiest_cpu_s"] = (
                result.requests / busiest if busiest > 0 else None
            )
        return fields, sampler.peak

    def handshakes(self, contender: Contender, tenants: list[str]) -> dict:
        """Full TLS handshakes (``s_time -new``), then resumed ones (``s_time -reuse``), each for
        ``--handshake-seconds`` from ``--handshake-clients`` clients in tenants t0, t1, ...
        (each against its own tenant's listener and certificate), counted per proxy CPU-s."""
        seconds, clients = self.args.handshake_seconds, self.args.handshake_clients
        places = [tenants[i % len(tenants)] for i in range(clients)]
        fields: dict = {}
        for mode, resume in (("full", False), ("resumed", True)):
            pids = measure.process_tree(contender.roots())
            cpu0, t0 = measure.cpu_seconds(pids), time.monotonic()
            procs = [
                loadgen.start_s_time(
                    loadgen.s_time_command(
                        topo.LISTEN_ADDR, topo.HTTPS_PORT, seconds, resume, self.args.load_cpu, t
                    )
                )
                for t in places
            ]
            results = [loadgen.finish_s_time(p, timeout=seconds + 120) for p in procs]
            wall = time.monotonic() - t0
            cpu = measure.cpu_seconds(pids) - cpu0
            count = sum(r.connections for r in results)
            errors = [r.error for r in results if r.error]
            fields.update(
                {
                    f"hs_{mode}_count": count,
                    f"hs_{mode}_resumed": sum(r.resumed for r in results),
                    f"hs_{mode}_per_s": count / wall,
                    f"hs_{mode}_proxy_cpu_s": cpu,
                    f"hs_{mode}_proxy_cpu_share": round(cpu / wall, 3),
                    f"hs_{mode}_per_cpu_s": count / cpu if cpu > 0 else None,
                    f"hs_{mode}_errors": len(errors),
                }
            )
            if errors:
                fields[f"hs_{mode}_error_text"] = errors[0]
        return fields

    def add_tenant(self, contender: Contender, grown: list[str], sample: dict, prefix: str) -> None:
        """Grow the running contender by one tenant (with its own certificate in the TLS
        configuration) while t0 is under load: wrk's keep-alive connections on HTTP, and a
        looping client opening a new connection per request (HTTPS in the TLS configuration,
        so a handshake each). The load starts ``--add-window``/3 s before the add and goes on
        until ``--add-window``*2/3 s after the new tenant accepts, however long the add takes
        (wrk stops on SIGINT and reports)."""
        tls = bool(prefix)
        netns, url = contender.target(False, self.tenants[0])
        _, loop_url = contender.target(tls, self.tenants[0])
        window = self.args.add_window
        cpu = self.args.load_cpu
        keepalive = loadgen.wrk_command(url, 900, self.args.connections, cpu, netns)
        looping = loadgen.wrk_command(
            loop_url, 900, self.args.add_loop_connections, cpu, netns, True
        )
        contender.prepare_add(grown)
        wrk = loadgen.start_wrk(keepalive)
        loop = loadgen.start_wrk(looping)
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
            result = loadgen.finish_wrk(wrk, interrupt=True)
            looped = loadgen.finish_wrk(loop, interrupt=True)
        sample[f"{prefix}add_failed_requests"] = result.failed + looped.failed
        sample[f"{prefix}add_requests"] = result.requests
        sample[f"{prefix}add_socket_errors"] = result.socket_errors
        sample[f"{prefix}add_non_2xx"] = result.non_2xx
        sample[f"{prefix}add_loop_requests"] = looped.requests
        sample[f"{prefix}add_loop_failed"] = looped.failed
        sample[f"{prefix}add_loop_socket_errors"] = looped.socket_errors

    # -- cleanup ------------------------------------------------------------------------
    def kill_tenant_processes(self) -> None:
        """Kill whatever still runs inside our tenant namespaces (we started all of it)."""
        inodes = set()
        for name in self.tenants:
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
