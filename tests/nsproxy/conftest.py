"""Harness for the daemon tests: tenant namespaces, echo upstreams and the real nsproxy process.

Everything runs inside the ``sandbox`` fixture (a throwaway network + mount namespace, with its
own /run/netns). Clients are real programs (curl, python http.client, raw sockets) started inside
a tenant's namespace with ``ip netns exec``.

The daemon runs with ``workers: NSPROXY_TEST_WORKERS`` (default 2) unless a test sets its own:
scripts/test.sh runs the daemon stage with 1 and with 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NSPROXY = str(REPO / ".venv" / "bin" / "nsproxy")
ECHO = str(Path(__file__).with_name("echo_server.py"))
RAWUP = str(Path(__file__).with_name("rawup.py"))
EXCHANGE = str(Path(__file__).with_name("exchange.py"))
ADDR = "10.0.0.250"
WORKERS = int(os.environ.get("NSPROXY_TEST_WORKERS", "2"))


def http_tenant(name, upstream_servers, netns=None, routes=None, upstream_netns=None, port=80):
    """A tenant config with one http listener on 10.0.0.250:port and one upstream 'app'."""
    return {
        "name": name,
        "netns": netns or name,
        "listeners": [{"listen": f"{ADDR}:{port}", "protocol": "http"}],
        "routes": routes or [{"host": "*", "path_prefix": "/", "upstream": "app"}],
        "upstreams": {"app": {"netns": upstream_netns, "servers": list(upstream_servers)}},
    }


class Proxy:
    """The daemon under test plus the namespaces and upstreams around it."""

    def __init__(self, sandbox, tmp_path: Path):
        self.sb = sandbox
        self.dir = tmp_path
        self.config_path = tmp_path / "nsproxy.json"
        self.log_path = tmp_path / "nsproxy.log"
        self.access_path = tmp_path / "access.log"
        self.echo_log = tmp_path / "echo.log"
        self.rawup_log = tmp_path / "rawup.log"
        self.socket = "/run/nsproxy/test.sock"  # the sandbox's private /run; short for AF_UNIX
        self.proc: subprocess.Popen | None = None
        self.helpers: list[subprocess.Popen] = []
        self.config: dict = {}

    # -- namespaces and upstreams --------------------------------------------------------
    def add_netns(self, *names: str, address: str | None = ADDR) -> None:
        """Create named namespaces with lo up and (optionally) address/32 on lo."""
        script = []
        for name in names:
            script.append(f"ip netns add {name} && ip -n {name} link set lo up")
            if address:
                script.append(f"ip -n {name} addr add {address}/32 dev lo")
        self.sb.sh(" && ".join(script))

    def start_echo(self, label: str, *addresses: str, netns: str | None = None):
        """Start echo_server.py (in the sandbox or in a tenant namespace); waits for 'ready'."""
        argv = [sys.executable, ECHO, label, *addresses]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        proc = self.sb.popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "ECHO_LOG": str(self.echo_log)},
        )
        self.helpers.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def start_rawup(self, label: str, *addresses: str, netns: str | None = None, idle=None):
        """Start rawup.py (the recording upstream); waits for 'ready'."""
        argv = [sys.executable, RAWUP, label, *addresses]
        if idle is not None:
            argv += ["--idle-timeout", str(idle)]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        proc = self.sb.popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RAWUP_LOG": str(self.rawup_log)},
        )
        self.helpers.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def upstream_saw(self) -> list[dict]:
        """Every request the recording upstreams parsed, in order."""
        if not self.rawup_log.exists():
            return []
        return [json.loads(line) for line in self.rawup_log.read_text().splitlines() if line]

    # -- config and daemon ---------------------------------------------------------------
    def write_config(self, tenants: list[dict], **top) -> None:
        cfg = {"instance": "test", "admin_socket": self.socket, "tenants": tenants}
        cfg.setdefault("access_log", str(self.access_path))
        cfg.setdefault("workers", WORKERS)
        cfg.update(top)
        self.config = cfg
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=1))
        tmp.replace(self.config_path)

    def start(
        self,
        wait_bound: bool = True,
        env: dict | None = None,
        wrap=(),
        wait: bool = True,
        log_level: str = "info",
    ) -> None:
        """Start the daemon (``wrap``: a command prefix, e.g. prlimit); wait until it serves
        (unless ``wait`` is false)."""
        self.logfile = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the daemon
        self.proc = self.sb.popen(
            [*wrap, NSPROXY, "run", "--config", str(self.config_path), "--log-level", log_level],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        if not wait:
            return
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"nsproxy exited:\n{self.log()}"
            status = self.status_json(check=False)
            if status is not None and (not wait_bound or self.all_bound(status)):
                return
            assert time.monotonic() < deadline, f"nsproxy did not come up:\n{self.log()}"
            time.sleep(0.1)

    @staticmethod
    def all_bound(status: dict) -> bool:
        return all(li["state"] == "bound" for t in status["tenants"] for li in t["listeners"])

    def wait_for(self, predicate, what: str, timeout: float = 20.0):
        """Poll the status document until ``predicate(status)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status_json()
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {status}"
            time.sleep(0.2)

    def tenant_status(self, name: str, status: dict | None = None) -> dict:
        status = status or self.status_json()
        return next(t for t in status["tenants"] if t["name"] == name)

    def status_json(self, check: bool = True):
        proc = self.sb.run([NSPROXY, "status", "--socket", self.socket, "--json"], check=False)
        if proc.returncode != 0:
            assert not check, proc.stderr
            return None
        return json.loads(proc.stdout)

    def nsproxy(self, *args: str) -> subprocess.CompletedProcess:
        return self.sb.run([NSPROXY, *args], check=False)

    def reload(self) -> subprocess.CompletedProcess:
        return self.nsproxy("reload", "--socket", self.socket)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def wait_access(self, count: int, timeout: float = 5.0) -> list[dict]:
        """The access records, once there are ``count`` (the log is flushed every second)."""
        deadline = time.monotonic() + timeout
        while len(records := self.access_records()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return records

    def access_records(self) -> list[dict]:
        if not self.access_path.exists():
            return []
        return [json.loads(line) for line in self.access_path.read_text().splitlines() if line]

    # -- clients -------------------------------------------------------------------------
    def curl(self, netns: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """curl inside a tenant namespace (-sS, with a 10 s limit)."""
        return self.sb.run(
            ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "10", *args], check=check
        )

    def get_json(self, netns: str, url: str, *args: str) -> dict:
        proc = self.curl(netns, "--fail", url, *args)
        assert proc.returncode == 0, f"curl {url} in {netns}: {proc.stderr}\n{self.log()}"
        return json.loads(proc.stdout)

    def exchange(self, netns: str, request: bytes, *options: str, port: int = 80) -> dict:
        """Send raw bytes from inside a tenant namespace and parse what comes back
        (exchange.py: responses, closed, reset, error, raw)."""
        proc = self.sb.run(
            ["ip", "netns", "exec", netns, sys.executable, EXCHANGE, ADDR, str(port), *options],
            input=request,
            text=False,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def python(self, netns: str, code: str, *args: str, **kw) -> subprocess.CompletedProcess:
        """Run a Python client script inside a tenant namespace."""
        return self.sb.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], **kw)


def headers_of(doc: dict) -> dict:
    """Echo server document -> {lower-case name: [values]}."""
    out: dict = {}
    for name, value in doc["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest.fixture
def proxy(sandbox, tmp_path):
    p = Proxy(sandbox, tmp_path)
    yield p
    p.stop()
    # Reap our own children first: the sandbox counts zombies as still running.
    for helper in p.helpers:
        helper.terminate()
    for helper in p.helpers:
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


def make_cert(folder, name: str, *dns: str) -> dict:
    """A self-signed certificate (its own CA) with the given DNS SANs, made by openssl."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    san = ",".join(f"DNS:{d}" for d in dns)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={dns[0]}",
            "-addext",
            f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
    )
    return {"cert": str(cert), "key": str(key)}
