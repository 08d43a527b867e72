"""Helpers for the process-model tests: the daemon's processes, their credentials, code run
inside a live worker (worker_probe.py), and looping clients that count failed requests."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

PROBE = str(Path(__file__).with_name("worker_probe.py"))
LOOP_CLIENT = str(Path(__file__).with_name("loop_client.py"))

# Starts a root "tenant" process with a service on its own loopback only, in namespace victim.
VICTIM = """import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7777)); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.send(b"tenant-private-secret"); c.close()
"""


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = " ".join(value.split())
    return fields


def nice_of(pid: int) -> int:
    """The nice value of process ``pid``: field 19 of /proc/PID/stat (proc(5)), counted after
    the command name, which may hold spaces and parentheses."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(after_name[16])


def worker_pids(status: dict, state: str = "serving") -> list[int]:
    return [w["pid"] for w in status["workers"] if w["state"] == state]


def probe_worker(proxy, pid: int, victim: int, binder: int) -> dict:
    """The privileges case's probes, run inside worker ``pid`` (worker_probe.py, in the
    sandbox: the worker reports to a port in its own network namespace)."""
    proc = proxy.sb.run([sys.executable, PROBE, str(pid), str(victim), str(binder)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


class Loops:
    """Looping clients (loop_client.py), one per tenant namespace; ``stop()`` returns their
    counts."""

    def __init__(self, proxy, tmp_path: Path, tenants: list[str], addr: str):
        self.proxy = proxy
        self.stop_file = tmp_path / "stop-loops"
        self.outs = {}
        self.procs = []
        for tenant in tenants:
            out = tmp_path / f"loop-{tenant}.json"
            self.outs[tenant] = out
            argv = ["ip", "netns", "exec", tenant, sys.executable, LOOP_CLIENT]
            proc = proxy.sb.popen([*argv, str(self.stop_file), str(out), addr, tenant])
            proxy.helpers.append(proc)
            self.procs.append(proc)

    def stop(self) -> dict[str, dict]:
        self.stop_file.write_text("")
        for proc in self.procs:
            proc.wait(timeout=60)
        return {t: json.loads(out.read_text()) for t, out in self.outs.items()}


def wait_until(predicate, what: str, timeout: float = 20.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie (it may exit, and its /proc entry go, at any
    point between the checks: that is "not alive", not an error)."""
    try:
        os.kill(pid, 0)
        return "Z" not in status_fields(pid)["State"][:1]
    except (ProcessLookupError, FileNotFoundError):
        return False


def pids_hierarchy() -> Path | None:
    """Where a pids cgroup can be made: the cgroup v1 pids hierarchy, or the v2 root with the
    pids controller on offer to its children; None when this kernel or mount has neither."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if not controllers.exists() or "pids" not in controllers.read_text().split():
        return None
    (v2 / "cgroup.subtree_control").write_text("+pids")
    return v2


@contextlib.contextmanager
def no_more_processes(pid: int):
    """Process ``pid`` moved into a pids cgroup of its own whose ``pids.max`` is what it has
    (kernel Documentation/admin-guide/cgroup-v2.rst, "PID"): its fork() and clone() fail
    with EAGAIN. Yields a function that lifts the limit. At the end every process of the
    cgroup (those forked since are in it too) goes back to the root, and the cgroup is
    removed."""
    root = pids_hierarchy()
    assert root is not None  # the caller skips first
    group = root / f"nsproxy-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(pid))
        (group / "pids.max").write_text((group / "pids.current").read_text().strip())
        yield lambda: (group / "pids.max").write_text("max")
    finally:
        for _attempt in range(50):
            for member in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, OSError):
                    (root / "cgroup.procs").write_text(member)
            try:
                group.rmdir()
                break
            except OSError:  # a process forked meanwhile: once more
                time.sleep(0.05)


#: Skips a test that needs :func:`no_more_processes` where the kernel or mount has no pids
#: cgroup (the VM and these sandboxes have one).
needs_pids_cgroup = pytest.mark.skipif(
    pids_hierarchy() is None,
    reason="no pids cgroup controller (cgroup v1 pids hierarchy or v2 pids) in this kernel "
    "or mount",
)


def ready_answer(proxy, port: int) -> str:
    """The body of the metrics listener's /ready on 127.0.0.1:``port``, then a space and the
    status code ("... 503")."""
    return proxy.sb.run(["curl", "-sS", "--max-time", "5", "-w", " %{http_code}",
                         f"http://127.0.0.1:{port}/ready"], check=False).stdout  # fmt: skip
