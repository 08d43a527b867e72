"""The things being compared: how each is configured, started, grown by one tenant and stopped.

Every proxy does the same work per request: plain HTTP on :80 and TLS on :443 in every tenant
namespace, keep-alive to the backend, and the tenant headers nsproxy adds
(X-Nsproxy-Tenant, X-Forwarded-For/-Proto/-Host). Access logs are off for all of them. Each TLS
listener serves the certificate the run's CertStore gives its tenant (its own by default).

A contender is one variant: nsproxy with a given ``workers`` setting (or none), HAProxy with a
given ``nbthread``. Its ``id`` names it in the results (``nsproxy-w2``, ``haproxy-t1``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench import topology as topo
from bench.certs import CertStore
from bench.measure import process_tree

REPO = Path(__file__).resolve().parents[1]
NSPROXY = REPO / ".venv" / "bin" / "nsproxy"
RUN_DIR = "/run/nsproxy"  # inside the benchmark's sandbox (tools/sandbox.py: a private /run)


class ContenderError(RuntimeError):
    """A contender could not be configured, started or grown."""


def _pin(cpus: list[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def _stop(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + timeout
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if all(p.poll() is not None for p in procs):
            return


class Contender:
    """Base class. A proxy contender listens in tenant namespaces; ``direct`` does not."""

    kind = "?"  # nsproxy, haproxy, nginx, direct
    is_proxy = True
    add_method = ""

    def __init__(self, workdir: Path, certs: CertStore, cpus: list[int] | None):
        self.workdir = workdir / self.id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs, self.cpus = certs, cpus
        self.procs: list[subprocess.Popen] = []
        self.tls = False  # whether the running instance has a TLS listener per tenant too
        self._checked: set[str] = set()  # digests of configs the contender's checker accepted

    # what the variant is --------------------------------------------------------------
    @property
    def id(self) -> str:
        """Short name of the variant, unique in a run (column of the tables)."""
        return self.kind

    @property
    def threads(self) -> int:
        """How many worker processes or threads serve the traffic (for pinning)."""
        return 1

    @property
    def setting(self) -> dict:
        """The contender's own setting that makes this variant, as written in its config."""
        return {}

    @property
    def label(self) -> str:
        return self.id

    def _checked_before(self, text: str) -> bool:
        """Whether this exact config was already accepted by the contender's checker (the
        same configs recur in every repetition; a check of 3000 certificates takes seconds)."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in self._checked:
            return True
        self._checked.add(digest)
        return False

    # what the harness needs ----------------------------------------------------------
    def available(self) -> str | None:
        """None when this contender can run here, else the reason it cannot."""
        return None

    def prepare(self, tenants: list[str], tls: bool) -> None:
        """Write (and check) what :meth:`start` with the same arguments needs; the harness
        calls it before the start timer (a check of 3000 certificates takes seconds)."""
        self._prepared = None

    def _prepared_config(self, tenants: list[str], tls: bool) -> Path | None:
        prepared, self._prepared = getattr(self, "_prepared", None), None
        return prepared[1] if prepared and prepared[0] == (tuple(tenants), tls) else None

    def start(self, tenants: list[str], tls: bool) -> None:
        """Start serving ``tenants`` on :80, and on :443 with TLS too when ``tls``."""
        raise NotImplementedError

    def prepare_add(self, tenants: list[str]) -> None:
        """Write what growing the running instance to ``tenants`` (old list plus one) needs."""
        raise NotImplementedError

    def trigger_add(self) -> None:
        """Make the running instance pick up the prepared tenant; do not wait for it."""
        raise NotImplementedError

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def target(self, tls: bool, tenant: str) -> tuple[str | None, str]:
        """(netns the load generator runs in, URL it loads)."""
        scheme, port = ("https", topo.HTTPS_PORT) if tls else ("http", topo.HTTP_PORT)
        return tenant, f"{scheme}://{topo.LISTEN_ADDR}:{port}/"

    def listen_targets(self, tenants: list[str]) -> list[tuple[str, str, int]]:
        ports = (topo.HTTP_PORT, topo.HTTPS_PORT) if self.tls else (topo.HTTP_PORT,)
        return [(t, topo.LISTEN_ADDR, port) for t in tenants for port in ports]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise ContenderError(f"{self.id} exited with {p.returncode}: {self.log_tail()}")

    def log_tail(self) -> str:
        log = self.workdir / "stderr.log"
        return log.read_text()[-2000:].strip() if log.exists() else ""

    def stop(self) -> None:
        """Stop the started processes, then kill any descendant that outlived them (a worker
        whose binder died without stopping it)."""
        descendants = set(process_tree(self.roots())) - set(self.roots())
        _stop(self.procs)
        self.procs = []
        for pid in descendants:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def version(self) -> str:
        return ""


class Direct(Contender):
    """No proxy: the load generator talks to the backend over loopback in the host namespace."""

    kind = "direct"
    is_proxy = False

    @property
    def label(self) -> str:
        return "direct (no proxy)"

    def start(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls

    def target(self, tls: bool, tenant: str) -> tuple[str | None, str]:
        if tls:
            return None, f"https://127.0.0.1:{topo.BACKEND_TLS_PORT}/"
        return None, f"http://127.0.0.1:{topo.BACKEND_PORT}/"


class Backend:
    """nginx in the host namespace answering every request with a tiny body: "ok <tenant>"
    (the X-Nsproxy-Tenant header it received), so a check can see each proxy adds it."""

    def __init__(self, workdir: Path, certs: CertStore, cpu: int | None):
        self.workdir = workdir / "backend"
        self.workdir.mkdir(parents=True, exist_ok=True)
        shared = certs.shared_cert()
        self.cert, self.key, self.cpu = shared.crt, shared.key, cpu
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        wd = self.workdir
        conf = wd / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {wd}/nginx.pid;
error_log {wd}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  {_nginx_temp_paths(wd)}
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type text/plain;
  server {{
    listen 127.0.0.1:{topo.BACKEND_PORT} backlog=4096;
    listen {topo.BRIDGE_ADDR}:{topo.BACKEND_PORT} backlog=4096;
    listen 127.0.0.1:{topo.BACKEND_TLS_PORT} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    location / {{ return 200 "ok $http_x_nsproxy_tenant\\n"; }}
    location = {topo.BACKEND_MISSING_PATH} {{ return 404 "missing\\n"; }}
  }}
}}
"""
        )
        with open(wd / "stderr.log", "w") as log:
            self.proc = subprocess.Popen(
                [*_pin([self.cpu] if self.cpu is not None else None), "nginx", "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc:
            _stop([self.proc])
            self.proc = None


def _nginx_temp_paths(wd: Path) -> str:
    return " ".join(
        f"{kind}_temp_path {wd}/tmp-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def haproxy_preamble(nbthread: int, admin_socket: Path | None = None) -> str:
    """HAProxy's ``global`` and ``defaults`` sections for every harness of the benchmark (the
    matrix and bench/handshake_split.py): the same threads, TLS floor, timeouts and
    ``forwardfor``; ``admin_socket`` adds the stats socket the matrix's reloads use."""
    admin = (
        f"  stats socket {admin_socket} mode 600 level admin expose-fd listeners\n"
        if admin_socket
        else ""
    )
    return f"""global
  nbthread {nbthread}
{admin}  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
"""


class HAProxy(Contender):
    """HAProxy in master-worker mode with ``nbthread`` threads and ``bind ... namespace tN`` per
    tenant."""

    kind = "haproxy"
    add_method = "master-worker reload (SIGUSR2), listeners handed over"

    def __init__(self, workdir: Path, certs: CertStore, cpus: list[int] | None, nbthread: int = 1):
        self.nbthread = nbthread
        super().__init__(workdir, certs, cpus)

    @property
    def id(self) -> str:
        return f"haproxy-t{self.nbthread}"

    @property
    def threads(self) -> int:
        return self.nbthread

    @property
    def setting(self) -> dict:
        return {"nbthread": self.nbthread}

    @property
    def label(self) -> str:
        return f"HAProxy nbthread {self.nbthread}"

    def available(self) -> str | None:
        return None if shutil.which("haproxy") else "haproxy is not installed"

    def _write(self, tenants: list[str]) -> Path:
        wd = self.workdir
        parts = [haproxy_preamble(self.nbthread, wd / "admin.sock")]
        for t in tenants:
            tls_bind = (
                f"  bind {topo.LISTEN_ADDR}:{topo.HTTPS_PORT} ssl crt "
                f"{self.certs.for_tenant(t).pem} namespace {t}\n"
                if self.tls
                else ""
            )
            parts.append(
                f"""
frontend fe_{t}
  bind {topo.LISTEN_ADDR}:{topo.HTTP_PORT} namespace {t}
{tls_bind}  http-request set-header X-Nsproxy-Tenant {t}
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be_{t}

backend be_{t}
  server s1 127.0.0.1:{topo.BACKEND_PORT}
"""
            )
        conf = wd / "haproxy.cfg"
        tmp = wd / "haproxy.cfg.tmp"
        text = "".join(parts)
        tmp.write_text(text)
        if not self._checked_before(text):
            check = subprocess.run(
                ["haproxy", "-c", "-q", "-f", str(tmp)], capture_output=True, text=True
            )
            if check.returncode != 0:
                self._checked.clear()
                raise ContenderError(f"haproxy config check failed: {check.stderr.strip()[-1500:]}")
        os.replace(tmp, conf)
        return conf

    def prepare(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls
        self._prepared = ((tuple(tenants), tls), self._write(tenants))

    def start(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls
        conf = self._prepared_config(tenants, tls) or self._write(tenants)
        argv = [*_pin(self.cpus), "haproxy", "-W", "-S", f"{self.workdir}/master.sock", "-f"]
        with open(self.workdir / "stderr.log", "w") as log:
            self.procs = [
                subprocess.Popen([*argv, str(conf)], stdout=log, stderr=subprocess.STDOUT)
            ]

    def prepare_add(self, tenants: list[str]) -> None:
        self._write(tenants)

    def trigger_add(self) -> None:
        self.procs[0].send_signal(signal.SIGUSR2)

    def version(self) -> str:
        out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()
        return out[2] if len(out) > 2 else ""


def _spawn_quiet(argv: list[str]) -> subprocess.Popen:
    # stderr stays the harness's, so an instance that cannot start says why
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


class NginxPerNetns(Contender):
    """One nginx (master + 1 worker) per tenant, started with ``ip netns exec``, reaching the
    backend over the tenant's veth."""

    kind = "nginx"
    add_method = "start one more instance in the new namespace"

    @property
    def label(self) -> str:
        return "nginx, one instance per netns"

    def available(self) -> str | None:
        return None if shutil.which("nginx") else "nginx is not installed"

    def _configure(self, tenant: str) -> list[str]:
        wd = self.workdir / tenant
        wd.mkdir(exist_ok=True)
        conf = wd / "nginx.conf"
        cert = self.certs.for_tenant(tenant)
        tls = (
            f"""    listen {topo.LISTEN_ADDR}:{topo.HTTPS_PORT} ssl;
    ssl_certificate {cert.crt};
    ssl_certificate_key {cert.key};
    ssl_protocols TLSv1.2 TLSv1.3;
"""
            if self.tls
            else ""
        )
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {wd}/nginx.pid;
error_log {wd}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  {_nginx_temp_paths(wd)}
  access_log off;
  keepalive_requests 10000000;
  upstream backend {{
    server {topo.BRIDGE_ADDR}:{topo.BACKEND_PORT};
    keepalive 64;
    keepalive_requests 10000000;
  }}
  server {{
    listen {topo.LISTEN_ADDR}:{topo.HTTP_PORT};
{tls}    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Nsproxy-Tenant {tenant};
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"""
        )
        return [*_pin(self.cpus), "ip", "netns", "exec", tenant, "nginx", "-c", str(conf)]

    def start(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls
        commands = [self._configure(t) for t in tenants]
        self.procs = [_spawn_quiet(argv) for argv in commands]

    def prepare_add(self, tenants: list[str]) -> None:
        self._pending = self._configure(tenants[-1])

    def trigger_add(self) -> None:
        self.procs.append(_spawn_quiet(self._pending))

    def log_tail(self) -> str:
        for p in self.procs:
            if p.poll() is not None:
                logs = sorted(self.workdir.glob("*/error.log"))
                return "; ".join(x.read_text()[-300:].strip() for x in logs[:3])
        return ""

    def version(self) -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
        return out.strip().rsplit("/", 1)[-1]


class Nsproxy(Contender):
    """This project's daemon at its default settings (access log off, as for the others), with
    ``workers`` written into its config only when the run asks for a worker count."""

    kind = "nsproxy"
    add_method = "config reload (SIGHUP)"

    def __init__(
        self, workdir: Path, certs: CertStore, cpus: list[int] | None, workers: int | str | None
    ):
        self.workers = workers  # None: no `workers` key (the daemon's default)
        super().__init__(workdir, certs, cpus)

    @property
    def id(self) -> str:
        return "nsproxy" if self.workers is None else f"nsproxy-w{self.workers}"

    @property
    def threads(self) -> int:
        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) if self.cpus is None else len(self.cpus)
        return self.workers or 1

    @property
    def setting(self) -> dict:
        return {} if self.workers is None else {"workers": self.workers}

    @property
    def label(self) -> str:
        if self.workers is None:
            return "nsproxy (no workers key: the daemon's default)"
        return f"nsproxy workers: {self.workers}"

    def available(self) -> str | None:
        if not NSPROXY.exists():
            return f"{NSPROXY} is missing: run scripts/bootstrap.sh once src/nsproxy exists"
        if self.workers is not None:
            return workers_unsupported()
        return None

    def _config(self, tenants: list[str]) -> dict:
        """The daemon's config for ``tenants`` (what :meth:`_write` writes and checks)."""
        http = {"listen": f"{topo.LISTEN_ADDR}:{topo.HTTP_PORT}", "protocol": "http"}

        def listeners(tenant: str) -> list[dict]:
            if not self.tls:
                return [http]
            cert = self.certs.for_tenant(tenant)
            https = {
                "listen": f"{topo.LISTEN_ADDR}:{topo.HTTPS_PORT}",
                "protocol": "https",
                "tls": {"certificates": [{"cert": str(cert.crt), "key": str(cert.key)}]},
            }
            return [http, https]

        config = {
            "instance": "bench",
            "admin_socket": str(self.workdir / "admin.sock"),
            "access_log": None,
            **self.setting,
            "tenants": [
                {
                    "name": t,
                    "netns": t,
                    "listeners": listeners(t),
                    "routes": [{"host": "*", "path_prefix": "/", "upstream": "backend"}],
                    "upstreams": {
                        "backend": {"netns": None, "servers": [f"127.0.0.1:{topo.BACKEND_PORT}"]}
                    },
                }
                for t in tenants
            ],
        }
        return config

    def _write(self, tenants: list[str]) -> Path:
        config = self._config(tenants)
        conf = self.workdir / "nsproxy.json"
        tmp = self.workdir / "nsproxy.json.tmp"
        text = json.dumps(config, indent=1)
        # The systemd unit's RuntimeDirectory, where `nsproxy check` leaves the certificate
        # sets it found valid for the `run` that follows (the sandbox's own /run).
        os.makedirs(RUN_DIR, 0o755, exist_ok=True)
        tmp.write_text(text)
        if not self._checked_before(text):
            check = subprocess.run(
                [str(NSPROXY), "check", str(tmp)], capture_output=True, text=True
            )
            if check.returncode != 0:
                self._checked.clear()
                raise ContenderError(
                    f"nsproxy check refused the config: {check.stdout}{check.stderr}"
                )
        os.replace(tmp, conf)
        return conf

    def prepare(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls
        self._prepared = ((tuple(tenants), tls), self._write(tenants))

    def start(self, tenants: list[str], tls: bool) -> None:
        self.tls = tls
        conf = self._prepared_config(tenants, tls) or self._write(tenants)
        argv = [*_pin(self.cpus), *self._command(), "run", "--config", str(conf)]
        with open(self.workdir / "stderr.log", "w") as log:
            self.procs = [subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)]

    def _command(self) -> list[str]:
        """The daemon's command line before ``run --config FILE``."""
        return [str(NSPROXY)]

    def prepare_add(self, tenants: list[str]) -> None:
        self._write(tenants)

    def trigger_add(self) -> None:
        self.procs[0].send_signal(signal.SIGHUP)

    def version(self) -> str:
        from importlib import metadata

        try:
            return metadata.version("nsproxy")
        except metadata.PackageNotFoundError:
            return "not installed"


@functools.lru_cache(maxsize=1)
def workers_unsupported() -> str | None:
    """None when ``nsproxy check`` accepts a config with ``"workers": 1``, else its message.

    The binder/worker daemon adds the key; today's single-process daemon refuses it as unknown.
    """
    if not NSPROXY.exists():
        return f"{NSPROXY} is missing"
    with tempfile.TemporaryDirectory(prefix="nsproxy-bench-probe-") as d:
        probe = Path(d) / "workers.json"
        probe.write_text(json.dumps({"workers": 1, "access_log": None, "tenants": []}))
        check = subprocess.run([str(NSPROXY), "check", str(probe)], capture_output=True, text=True)
    if check.returncode == 0:
        return None
    message = (check.stdout + check.stderr).strip().splitlines()
    return "nsproxy check refuses `workers`: " + (message[0] if message else "no message")


KINDS = ("nsproxy", "haproxy", "nginx", "direct")
"""What --contenders accepts; the variants of each come from --nsproxy-workers and
--haproxy-nbthread."""
