"""The lab: one real nsproxy in a sandbox, two tenants, three recording upstreams, two clients.

    sandbox (host) namespace         tenant t1 namespace            tenant t2 namespace
    shared upstream                  listener 10.0.0.250:80         listener 10.0.0.250:80
      127.0.0.1:8080, :8081          own upstream 10.0.0.250:8081   own upstream 10.0.0.250:8081
    nsproxy                          client agent                   client agent

Both tenants use the same addresses (as real tenants do) and route ``/s/`` to the shared
upstream, ``/o/`` to their own; ``/m/`` matches no route (the marker, below). The lab is built
once per test module; examples are told apart by the id in their paths, and every upstream
connection is closed after each example, so none is carried from one example to the next.

The access log goes to the daemon's standard output (``access_log: "-"``), which
PYTHONUNBUFFERED makes write-through: a record is in the file as soon as its request ends,
not at the daemon's one-second flush (which would cost about a second per example). After each
example a client sends a marker request (``/m/<id>``, answered 404 by the proxy itself); once
the marker's record is in the file, so are the records of every request before it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Proxy
from grammar import MAX_BODY_BYTES
from invariants import check, report
from model import (
    LISTENER,
    TENANTS,
    Example,
    Observation,
    Request,
    Session,
    SessionResult,
    UpstreamRecord,
)

from tools.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
SHARED_SERVERS = ("127.0.0.1:8080", "127.0.0.1:8081")
OWN_SERVER = "10.0.0.250:8081"
SESSION_TIMEOUT = 6.0  # s; above the proxy's read timeout plus its one-second sweep
TIMEOUTS = {"connect": 2, "header_read": 2, "read": 3, "idle": 10}


class Helper:
    """A helper program in the sandbox speaking one JSON line per command."""

    def __init__(self, proxy: Proxy, argv: list[str], netns: str | None = None):
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.proc = proxy.sb.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proxy.helpers.append(self.proc)
        first = self.proc.stdout.readline().strip()
        assert first == "ready", f"{argv}: {first!r}"

    def send(self, command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"helper {self.proc.args} ended"
        return json.loads(line)

    def ask(self, command) -> dict:
        self.send(command)
        return self.receive()


class Lab:
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.ids = itertools.count(1)
        self.log_offset = 0  # where the daemon's output (log lines and access records) was read
        proxy.add_netns(*TENANTS)
        upstream = [sys.executable, str(HERE / "recording_upstream.py")]
        client = [sys.executable, str(HERE / "client_agent.py"), LISTENER[0], str(LISTENER[1])]
        self.upstreams = {"shared": Helper(proxy, [*upstream, *SHARED_SERVERS])}
        for tenant in TENANTS:
            self.upstreams[f"own-{tenant}"] = Helper(proxy, [*upstream, OWN_SERVER], netns=tenant)
        self.clients = {tenant: Helper(proxy, client, netns=tenant) for tenant in TENANTS}
        proxy.write_config(
            [self._tenant(t) for t in TENANTS],
            limits={"max_body_bytes": MAX_BODY_BYTES},
            timeouts=TIMEOUTS,
            access_log="-",
            # One worker: the marker's access record then comes after the example's (each
            # worker flushes its own lines); the process model has its own tests.
            workers=1,
        )
        proxy.start(env={"PYTHONUNBUFFERED": "1"})

    @staticmethod
    def _tenant(name: str) -> dict:
        return {
            "name": name,
            "netns": name,
            "listeners": [{"listen": f"{LISTENER[0]}:{LISTENER[1]}", "protocol": "http"}],
            "routes": [
                {"path_prefix": "/s/", "upstream": "shared"},
                {"path_prefix": "/o/", "upstream": "own"},
            ],
            "upstreams": {
                "shared": {"netns": None, "servers": list(SHARED_SERVERS)},
                "own": {"netns": name, "servers": [OWN_SERVER]},
            },
        }

    def run(self, example: Example) -> tuple[Example, Observation]:
        """Play ``example`` with a fresh id; (the bound example, what was observed)."""
        example_id = f"e{next(self.ids):05d}"
        example = example.bind(example_id)
        results = tuple(self._play(session) for session in example.sessions)
        access = self._access_records(example_id)
        for helper in self.upstreams.values():  # ask all, then read: they close in parallel
            helper.send("take")
        records = []
        for name, helper in self.upstreams.items():
            reply = helper.receive()
            records += [
                UpstreamRecord(
                    name,
                    c["server"],
                    base64.b64decode(c["data"]),
                    c["tunnel_at"],
                    c["truncated"],
                )
                for c in reply["connections"]
            ]
        return example, Observation(example_id, results, access, tuple(records))

    def _play(self, session: Session) -> SessionResult:
        writes, expect_before = session.writes()
        reply = self.clients[session.tenant].ask(
            {
                "writes": [base64.b64encode(w).decode() for w in writes],
                "expect_before": expect_before,
                "methods": [r.method for r in session.requests],
                "ends": session.ends(),
                "half_close": session.half_close,
                "timeout": SESSION_TIMEOUT,
            }
        )
        return SessionResult(
            base64.b64decode(reply["received"]), reply["sent"], reply["end"], reply["write_error"]
        )

    def _access_records(self, example_id: str) -> tuple[dict, ...]:
        """The access records of this example, read once the marker's record is there."""
        marker = Session(
            TENANTS[0],
            (Request(f"GET /m/{example_id} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode()),),
        )
        self._play(marker)
        needle = f'"/m/{example_id}"'.encode()
        deadline = time.monotonic() + 5
        with open(self.proxy.log_path, "rb") as output:
            output.seek(self.log_offset)
            lines: list[bytes] = []
            while True:
                lines += output.readlines()
                if lines and not lines[-1].endswith(b"\n"):  # half written: read it again
                    output.seek(-len(lines.pop()), os.SEEK_CUR)
                if any(needle in line for line in lines):
                    break
                assert time.monotonic() < deadline, f"no access record for the marker {example_id}"
                time.sleep(0.005)
            self.log_offset = output.tell()
        records = (json.loads(line) for line in lines if line.startswith(b'{"time"'))
        return tuple(r for r in records if f"/{example_id}/" in r["path"])


@contextlib.contextmanager
def open_lab(workdir: Path):
    """A running Lab in its own sandbox; everything it started ends with the block."""
    with Sandbox() as sandbox:
        proxy = Proxy(sandbox, workdir)
        try:
            yield Lab(proxy)
        finally:
            proxy.stop()
            for helper in proxy.helpers:
                helper.stdin.close()
                helper.terminate()
            for helper in proxy.helpers:
                try:
                    helper.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    helper.kill()
                    helper.wait()


def lab_fixture(tmp_path_factory):
    """Body of the module-scoped ``lab`` fixture of each test module here: one daemon for all
    the examples of a module (Hypothesis calls the test many times within one fixture)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    with open_lab(tmp_path_factory.mktemp("differential")) as lab:
        yield lab


def verify(lab: Lab, example: Example) -> None:
    """Run ``example`` and fail with the evidence if it breaks any invariant."""
    bound, seen = lab.run(example)
    broken = check(bound, seen)
    assert not broken, report(bound, seen, broken)
