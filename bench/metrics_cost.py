"""What nsproxy's metrics cost per tenant: one repetition of the metrics-cost measurement.

Two starts of the same daemon, same tenants (an HTTP listener each; routes ``/`` to the
backend and ``/down/`` to an upstream whose only server refuses connections):

1. without the metrics listener: idle RSS and PSS (``plain_idle_*``);
2. with it (``metrics.listen`` on 127.0.0.1 in the host namespace), started through
   bench/metrics_probe.py: idle RSS/PSS and a probe; then every tenant serves four requests,
   each on its own connection (``GET /`` 200, ``POST /`` with a 1000-byte body 200,
   ``GET /bench-404`` 404 from the backend, ``GET /down/`` 5xx with an upstream connect error),
   so every tenant has counters by status class, bytes in and out and an upstream error in
   whichever worker served it; after ``--metrics-settle`` seconds (the daemon's heap tidy after
   a burst waits up to 10 s) busy RSS/PSS and a probe; then one scrape of ``/metrics``
   (answer size, wall time at the client, CPU of the daemon's processes), and after
   ``--settle`` seconds RSS/PSS and a probe again.

Every per-tenant figure is a difference within one repetition divided by N, in bytes. The
methods, named in the tables (fields.METRICS_LABELS): RSS/PSS are /proc/PID/smaps_rollup
summed over the daemon's processes; the probe is a ``sys.getsizeof`` walk of each worker's
per-tenant metrics objects (bench/metrics_probe.py says what it counts), which isolates the
metrics state from everything else the traffic leaves (upstream runtimes and pools made at a
tenant's first request, the interpreter's free lists, heap fragmentation).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import socket
import sys
import time
from pathlib import Path

from bench import measure
from bench import topology as topo
from bench.contenders import ContenderError, Nsproxy
from bench.metrics_probe import MARK, PROBE_SIGNAL
from bench.netns import Namespaces, wait_listening

PROBE = Path(__file__).resolve().with_name("metrics_probe.py")
BODY = b"x" * 1000
# (method, path, body, status class the answer must have)
REQUESTS = (
    ("GET", "/", b"", 2),
    ("POST", "/", BODY, 2),
    ("GET", topo.BACKEND_MISSING_PATH, b"", 4),
    ("GET", "/down/", b"", 5),
)
MAX_ANSWER = 64 * 1024  # bytes read of one answer (the backend's are about 150)
MAX_SCRAPE = 256 * 1024 * 1024  # bytes read of one /metrics answer
IN_FLIGHT = 256  # connections open at once while making the tenants busy


class ProbedNsproxy(Nsproxy):
    """nsproxy for this measurement: the ``/down/`` route and upstream in every tenant, the
    metrics listener on or off (``metrics``), started through bench/metrics_probe.py."""

    def __init__(self, base: Nsproxy, workdir: Path):
        super().__init__(workdir, base.certs, base.cpus, base.workers)
        self.metrics = False

    def _config(self, tenants: list[str]) -> dict:
        config = super()._config(tenants)
        if self.metrics:
            host, port = topo.METRICS_LISTEN
            config["metrics"] = {"listen": f"{host}:{port}"}
        for tenant in config["tenants"]:
            tenant["routes"].append({"host": "*", "path_prefix": "/down/", "upstream": "down"})
            tenant["upstreams"]["down"] = {
                "netns": None,
                "servers": [f"127.0.0.1:{topo.CLOSED_PORT}"],
            }
        return config

    def _command(self) -> list[str]:
        return [sys.executable, str(PROBE)]

    def probe(self, timeout: float = 20.0) -> list[dict]:
        """The walk of every worker (one dict each, bench/metrics_probe.py): each process
        of the daemon is signalled and writes one marked line to the daemon's log."""
        log = self.workdir / "stderr.log"
        offset = log.stat().st_size
        pids = measure.process_tree(self.roots())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, PROBE_SIGNAL)
        deadline = time.monotonic() + timeout
        while True:
            with open(log, "rb") as f:
                f.seek(offset)
                lines = [x for x in f.read().splitlines() if x.startswith(MARK)]
            results = {r["pid"]: r for r in (json.loads(x[len(MARK) :]) for x in lines)}
            if set(pids) <= set(results):
                break
            self.check_alive()
            if time.monotonic() > deadline:
                raise ContenderError(
                    f"{self.id}: {len(results)} of {len(pids)} processes answered the memory "
                    f"probe within {timeout:.0f} s"
                )
            time.sleep(0.05)
        results = list(results.values())
        failed = [r["error"] for r in results if r.get("error")]
        if failed:
            raise ContenderError(f"{self.id}: memory probe failed: {failed[0]}")
        workers = [r for r in results if r.get("worker")]
        if not workers:
            raise ContenderError(f"{self.id}: no worker answered the memory probe")
        return workers


def _walk_fields(prefix: str, workers: list[dict]) -> dict:
    out = {
        f"{prefix}walk_bytes": sum(w["bytes"] for w in workers),
        f"{prefix}walk_tenants": sum(w["tenants_with_counters"] for w in workers),
        f"{prefix}walk_error_tenants": sum(w["tenants_with_upstream_errors"] for w in workers),
    }
    for kind in workers[0]["bytes_by_kind"]:
        out[f"{prefix}walk_{kind}_bytes"] = sum(w["bytes_by_kind"][kind] for w in workers)
    return out


def _memory(contender: ProbedNsproxy, prefix: str) -> dict:
    """Summed RSS and PSS (kB), and each process's RSS by its title (``nsproxy: worker 1
    bench``: which process grew)."""
    contender.check_alive()
    pids = measure.process_tree(contender.roots())
    rss, pss = measure.memory_kb(pids)
    each = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            each[f"{title} ({pid})"] = measure.rss_kb([pid])  # its own mappings only
    return {f"{prefix}rss_kb": rss, f"{prefix}pss_kb": pss, f"{prefix}rss_kb_by_process": each}


def measure_once(
    namespaces: Namespaces, contender: ProbedNsproxy, tenants: list[str], settle: float,
    busy_settle: float, cleanup,
) -> dict:  # fmt: skip
    """One repetition (see the module text); ``cleanup`` kills what runs in the tenants."""
    n = len(tenants)
    sample: dict = {"processes": 0}
    for metrics in (False, True):
        contender.metrics = metrics
        contender.prepare(tenants, False)
        contender.start(tenants, False)
        try:
            targets = contender.listen_targets(tenants)
            if metrics:
                targets.append((None, *topo.METRICS_LISTEN))
            try:
                wait_listening(
                    namespaces, targets, timeout=60 + n * 0.1, alive=contender.check_alive
                )
            except TimeoutError as exc:
                raise ContenderError(f"{contender.id}: {exc}") from None
            time.sleep(settle)
            if not metrics:
                sample.update(_memory(contender, "plain_idle_"))
                continue
            sample["processes"] = len(measure.process_tree(contender.roots()))
            sample.update(_memory(contender, "idle_"))
            sample.update(_walk_fields("idle_", contender.probe()))
            t0 = time.monotonic()
            sample.update(busy_traffic(namespaces, tenants, timeout=60 + n * 0.2))
            sample["traffic_s"] = round(time.monotonic() - t0, 3)
            time.sleep(busy_settle)
            sample.update(_memory(contender, "busy_"))
            sample.update(_walk_fields("busy_", contender.probe()))
            pids = measure.process_tree(contender.roots())
            cpu0, t0 = measure.cpu_seconds(pids), time.monotonic()
            body = scrape(topo.METRICS_LISTEN)
            sample["scrape_ms"] = (time.monotonic() - t0) * 1000
            sample["scrape_cpu_s"] = measure.cpu_seconds(pids) - cpu0
            sample.update(scrape_fields(body))
            time.sleep(settle)
            sample.update(_memory(contender, "scraped_"))
            sample.update(_walk_fields("scraped_", contender.probe()))
        finally:
            contender.stop()
            cleanup()
    sample.update(per_tenant(sample, n))
    return sample


def per_tenant(s: dict, n: int) -> dict:
    """The per-tenant figures of a sample, in bytes (kB from /proc times 1024)."""
    out = {}
    for kind in ("rss", "pss"):
        out[f"listener_{kind}_b_per_tenant"] = (
            (s[f"idle_{kind}_kb"] - s[f"plain_idle_{kind}_kb"]) * 1024 / n
        )
        out[f"busy_{kind}_b_per_tenant"] = (s[f"busy_{kind}_kb"] - s[f"idle_{kind}_kb"]) * 1024 / n
        out[f"scrape_{kind}_b_per_tenant"] = (
            (s[f"scraped_{kind}_kb"] - s[f"busy_{kind}_kb"]) * 1024 / n
        )
    # all of it: counters made before the traffic (a refused or early-closed connection of
    # the start's probe makes them too) belong to busy tenants as well
    out["walk_b_per_tenant"] = s["busy_walk_bytes"] / n
    counted = s["busy_walk_tenants"]
    out["walk_b_per_tenant_worker"] = s["busy_walk_bytes"] / counted if counted else None
    out["scrape_bytes_per_tenant"] = s["scrape_bytes"] / n
    out["scrape_us_per_tenant"] = s["scrape_ms"] * 1000 / n
    out["scrape_cpu_us_per_tenant"] = s["scrape_cpu_s"] * 1e6 / n
    return out


# -- traffic ---------------------------------------------------------------------------------
def _request(method: str, path: str, body: bytes, tenant: str) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {tenant}.bench.example\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def busy_traffic(namespaces: Namespaces, tenants: list[str], timeout: float) -> dict:
    """Every request of :data:`REQUESTS` to every tenant, each on its own connection made
    inside the tenant's namespace, at most :data:`IN_FLIGHT` at once. Returns the counts; an
    answer with another status class is a failed request (``traffic_failed``, first one in
    ``traffic_error``)."""
    jobs = [(t, r) for t in tenants for r in REQUESTS]
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    done = failed = 0
    first_error = None

    def fail(tenant: str, path: str, why: str) -> None:
        nonlocal failed, first_error
        failed += 1
        first_error = first_error or f"{tenant} {path}: {why}"

    try:
        while jobs or sel.get_map():
            while jobs and len(sel.get_map()) < IN_FLIGHT:
                tenant, (method, path, body, want) = jobs.pop()
                sock = namespaces.socket(tenant)
                sock.setblocking(False)
                err = sock.connect_ex((topo.LISTEN_ADDR, topo.HTTP_PORT))
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    fail(tenant, path, os.strerror(err))
                    continue
                state = {
                    "tenant": tenant,
                    "path": path,
                    "want": want,
                    "out": _request(method, path, body, tenant),
                    "in": b"",
                }
                sel.register(sock, selectors.EVENT_WRITE, state)
            if time.monotonic() > deadline:
                raise ContenderError(
                    f"making the tenants busy: {len(jobs) + len(sel.get_map())} requests "
                    f"unanswered after {timeout:.0f} s"
                )
            for key, _ in sel.select(timeout=0.5):
                sock, state = key.fileobj, key.data
                try:
                    if state["out"]:
                        sent = sock.send(state["out"])
                        state["out"] = state["out"][sent:]
                        if not state["out"]:
                            sel.modify(sock, selectors.EVENT_READ, state)
                        continue
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    chunk, error = b"", exc.strerror or str(exc)
                else:
                    error = None
                if chunk and len(state["in"]) < MAX_ANSWER:
                    state["in"] += chunk
                    continue
                sel.unregister(sock)
                sock.close()
                done += 1
                status = re.match(rb"HTTP/1\.[01] (\d{3}) ", state["in"])
                if error or status is None:
                    fail(state["tenant"], state["path"], error or f"answer {state['in'][:80]!r}")
                elif int(status.group(1)) // 100 != state["want"]:
                    fail(state["tenant"], state["path"], f"status {status.group(1).decode()}")
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    out = {"traffic_requests": done, "traffic_failed": failed}
    if first_error:
        out["traffic_error"] = first_error
    return out


# -- the scrape ------------------------------------------------------------------------------
def scrape(address: tuple[str, int], timeout: float = 60.0) -> bytes:
    """One ``GET /metrics`` (host namespace); the body. A non-200 answer is an error."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while len(data) <= MAX_SCRAPE:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ContenderError(f"/metrics answered {head[:200]!r}")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    if length is None or int(length.group(1)) != len(body):
        raise ContenderError(f"/metrics: {len(body)} bytes read, head {head[:300]!r}")
    return body


_SAMPLE = re.compile(r"^([a-z_]+)\{([^}]*)\} (\S+)$")


def scrape_fields(body: bytes) -> dict:
    """Size and series count of a /metrics answer, and the sums that show every tenant was
    counted: requests by status class and upstream connect errors."""
    series = 0
    sums = {"2xx": 0, "4xx": 0, "5xx": 0, "connect": 0}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.groups()
        if name == "nsproxy_requests_total":
            code = re.search(r'code="(\dxx)"', labels)
            if code and code.group(1) in sums:
                sums[code.group(1)] += int(float(value))
        elif name == "nsproxy_upstream_errors_total" and 'reason="connect"' in labels:
            sums["connect"] += int(float(value))
    return {
        "scrape_bytes": len(body),
        "scrape_series": series,
        "scrape_requests_2xx": sums["2xx"],
        "scrape_requests_4xx": sums["4xx"],
        "scrape_requests_5xx": sums["5xx"],
        "scrape_upstream_connect_errors": sums["connect"],
    }
