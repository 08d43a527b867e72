"""Helpers for the process-model tests: the daemon's processes, their credentials, code run
inside a live worker (gdb), and looping clients that count failed requests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# The three probes of ../shared/cases/16-unit-capabilities-blast-radius, as code that runs
# inside the process under test and prints one JSON line tagged PROBE-RESULT on its stderr.
PROBES = r"""
import ctypes, json, os, socket, sys
victim, binder = {victim}, {binder}
out = {{"status": {{}}}}
for line in open("/proc/self/status"):
    name, _, value = line.partition(":")
    if name in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                "NoNewPrivs"):
        out["status"][name] = " ".join(value.split())
try:
    with open("/etc/shadow", "rb") as f:
        out["shadow"] = "YES: read %d bytes" % len(f.read())
except OSError as e:
    out["shadow"] = "no: " + e.strerror
for who, pid in (("victim", victim), ("binder", binder)):
    try:
        maps = open("/proc/%d/maps" % pid).read().splitlines()
        lo, hi = (int(x, 16) for x in maps[0].split()[0].split("-"))
        fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
        data = os.pread(fd, min(hi - lo, 4096), lo)
        os.close(fd)
        out["mem_" + who] = "YES: read %d bytes" % len(data)
    except (OSError, IndexError) as e:
        out["mem_" + who] = "no: " + str(getattr(e, "strerror", None) or e)
entered = None
libc = ctypes.CDLL(None, use_errno=True)
for path in ("/run/netns/victim", "/proc/%d/ns/net" % victim):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        entered = entered or "no: open %s: %s" % (path, e.strerror)
        continue
    if libc.setns(fd, 0x40000000) != 0:
        entered = "no: setns via %s: %s" % (path, os.strerror(ctypes.get_errno()))
        os.close(fd)
        continue
    try:
        data = socket.create_connection(("127.0.0.1", 7777), timeout=2).recv(100)
        entered = "YES: entered via %s; its service said %r" % (path, data)
    except OSError as e:
        entered = "YES: entered via %s (%s)" % (path, e)
    break
out["setns"] = entered
out["fds"] = sorted(set(os.readlink("/proc/self/fd/" + n).split(":")[0]
                        for n in os.listdir("/proc/self/fd")
                        if os.path.exists("/proc/self/fd/" + n)))
sys.stderr.write("PROBE-RESULT " + json.dumps(out) + "\n")
sys.stderr.flush()
"""

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


def worker_pids(status: dict, state: str = "serving") -> list[int]:
    return [w["pid"] for w in status["workers"] if w["state"] == state]


def run_in_process(pid: int, code: str) -> None:
    """Run Python ``code`` inside the live process ``pid`` (its main thread, holding the GIL
    through PyGILState_Ensure), as pyrasite does: gdb attaches, calls the interpreter, detaches.
    This is code execution inside the worker itself, with its credentials, as a parser bug
    would give it."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb is missing: scripts/bootstrap.sh installs it")
    literal = json.dumps(code)  # a C string literal is a JSON string for these characters
    proc = subprocess.run(
        [
            gdb,
            "-p",
            str(pid),
            "-batch",
            "-nx",
            "-ex",
            "set confirm off",
            "-ex",
            "call (int)PyGILState_Ensure()",
            "-ex",
            f"call (int)PyRun_SimpleString({literal})",
            "-ex",
            "call (void)PyGILState_Release($1)",
            "-ex",
            "detach",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def probe_worker(proxy, pid: int, victim: int, binder: int) -> dict:
    """The probes' results, run inside worker ``pid`` (read back from the daemon's log)."""
    before = proxy.log_path.read_text(errors="replace").count("PROBE-RESULT ")
    run_in_process(pid, textwrap.dedent(PROBES.format(victim=victim, binder=binder)))
    deadline = time.monotonic() + 20
    while True:
        lines = [
            line
            for line in proxy.log_path.read_text(errors="replace").splitlines()
            if "PROBE-RESULT " in line
        ]
        if len(lines) > before:
            return json.loads(lines[-1].split("PROBE-RESULT ", 1)[1])
        assert time.monotonic() < deadline, "the probe printed nothing:\n" + proxy.log()
        time.sleep(0.2)


# A client that loops requests until a stop file appears: every third one on a new
# connection, the others on one keep-alive connection (reopened when the server closes it,
# which is not a failure when the last response said Connection: close). Writes counts.
LOOP_CLIENT = r"""
import http.client, json, os, sys, time
stop, out, addr, tenant = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ok = fail = closes = 0
errors = []
keep = None
i = 0
t_end = None
while True:
    if os.path.exists(stop):
        t_end = t_end or time.monotonic() + 0.3
        if time.monotonic() > t_end and i > 20:
            break
    i += 1
    fresh = i % 3 == 0
    if keep is None:
        keep = http.client.HTTPConnection(addr, 80, timeout=10)
    conn = http.client.HTTPConnection(addr, 80, timeout=10) if fresh else keep
    try:
        conn.request("GET", f"/loop/{tenant}/{i}")
        r = conn.getresponse()
        body = json.loads(r.read())
        tenant_seen = {k.lower(): v for k, v in body["headers"]}.get("x-nsproxy-tenant")
        assert r.status == 200 and tenant_seen == tenant, (r.status, tenant_seen)
        ok += 1
        if r.getheader("connection", "").lower() == "close":
            closes += 1
            conn.close()
            if conn is keep:
                keep = None
    except Exception as exc:
        fail += 1
        errors.append(f"{time.time():.3f} {exc!r}")
        conn.close()
        if conn is keep:
            keep = None
    if fresh:
        conn.close()
    time.sleep(0.003)
json.dump({"ok": ok, "fail": fail, "closes": closes, "errors": errors[:10]}, open(out, "w"))
"""


class Loops:
    """Looping clients, one per tenant namespace; ``stop()`` returns their counts."""

    def __init__(self, proxy, tmp_path: Path, tenants: list[str], addr: str):
        self.proxy = proxy
        self.stop_file = tmp_path / "stop-loops"
        self.outs = {}
        self.procs = []
        for tenant in tenants:
            out = tmp_path / f"loop-{tenant}.json"
            self.outs[tenant] = out
            proc = proxy.sb.popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    tenant,
                    sys.executable,
                    "-c",
                    LOOP_CLIENT,
                    str(self.stop_file),
                    str(out),
                    addr,
                    tenant,
                ]  # fmt: skip
            )
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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "Z" not in status_fields(pid)["State"][:1]
