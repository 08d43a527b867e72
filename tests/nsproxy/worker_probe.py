#!/usr/bin/env python3
"""Run the three probes of the privileges case (../shared/cases/16-unit-capabilities-blast-radius)
inside a live nsproxy worker, as code a parser bug would run there, and print what they got.

    worker_probe.py WORKER_PID VICTIM_PID BINDER_PID

hypno (with pyinjector) makes the worker's main thread load a small library that runs the
probes through the interpreter (PyGILState_Ensure + PyRun_SimpleString), so they run with the
worker's own credentials and capabilities. (gdb's ``call`` did the same until a host with AMX,
where gdb 13 fails with "Couldn't write extended state status: Bad address" and the call never
runs; pyinjector's injection works there.) The library is written to PROBE_LIB_DIR (default
/run/tenantnet-probe, the sandbox's own /run), a folder the worker can read and map: not /tmp
under the unit's PrivateTmp=, and not a noexec /run (the VM sets a folder under /usr/local).

The probes try to read /etc/shadow, to read the memory of the victim (a root process of
another tenant) and of the binder through /proc/PID/mem, and to enter the victim's network
namespace (via /run/netns/victim and /proc/VICTIM/ns/net) to reach its loopback-only service
on 127.0.0.1:7777. They send their findings as one JSON object to a TCP port this script
listens on (the worker can connect to the host namespace's loopback; it cannot write a file),
which this script prints. Each finding is "no: <why>" or "YES: <what it got>".
Runs as root, in the worker's network namespace. Used by tests/nsproxy and the molecule VM.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile

PROBES = r"""
import ctypes, json, os, socket
victim, binder, port = {victim}, {binder}, {port}
out = {{"status": {{}}}}
for line in open("/proc/self/status"):
    name, _, value = line.partition(":")
    if name in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                "NoNewPrivs"):
        out["status"][name] = " ".join(value.split())
# What the worker holds (before the probes open anything): kinds of its open files.
out["fds"] = sorted(set(os.readlink("/proc/self/fd/" + n).split(":")[0]
                        for n in os.listdir("/proc/self/fd")
                        if os.path.exists("/proc/self/fd/" + n)))
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
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
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
    libc.setns(home, 0x40000000)
    break
out["setns"] = entered
with socket.create_connection(("127.0.0.1", port), timeout=5) as report:
    report.sendall(json.dumps(out).encode())
"""


def run_in_process(pid: int, code: str) -> None:
    """Run Python ``code`` in the main thread of the live process ``pid`` (hypno: the GIL taken
    with PyGILState_Ensure); raises RuntimeError if it could not."""
    from hypno import inject_py  # tests only (requirements-dev.txt; the VM: a venv of its own)

    folder = os.environ.get("PROBE_LIB_DIR", "/run/tenantnet-probe")
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)  # the worker's user must read the library in it
    previous = tempfile.tempdir
    tempfile.tempdir = folder  # where hypno writes the library, mode 0644, removed after
    try:
        inject_py(pid, code)
    except Exception as exc:
        raise RuntimeError(f"could not run code in process {pid}: {exc}") from exc
    finally:
        tempfile.tempdir = previous


def probe(worker: int, victim: int, binder: int) -> dict:
    """The probes' findings, from inside ``worker``."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        port = listener.getsockname()[1]
        run_in_process(worker, PROBES.format(victim=victim, binder=binder, port=port))
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    return json.loads(data)


if __name__ == "__main__":
    worker_pid, victim_pid, binder_pid = (int(a) for a in sys.argv[1:4])
    print(json.dumps(probe(worker_pid, victim_pid, binder_pid), indent=1))
