"""What a relayed connection costs the worker in memory and CPU, nsproxy builds side by side.

    .venv/bin/python bench/connection_buffers.py
    .venv/bin/python bench/connection_buffers.py --build old=/path/to/checkout/src/nsproxy \\
        --build new=src/nsproxy

One tenant (``t1``, an http and an https listener, RSA-2048) in a throwaway sandbox
(tools/sandbox.py), the proxy pinned to CPU 0 with one worker, clients and the backend
(tests/nsproxy/echo_server.py) on CPU 1. For each build, ``--rounds`` times, for http and https:

- ``kb_per_stalled``: ``--connections`` clients (4 KiB receive buffers) each ask for a 16 MiB
  chunked response and read none of it; after ``--settle`` seconds, the daemon's summed RSS
  (binder and worker, from /proc) less its RSS before, divided by the connections, in kB:
  what a tenant that stops reading costs the worker (``buffering.py``);
- ``cpu_s_per_gib``: one curl downloads 1 GiB (chunked, 64 KiB chunks) through the proxy;
  the daemon's CPU seconds (utime + stime of every process) for it. The price of smaller
  reads.

Prints one JSON line per build, round and protocol. Compare builds within one run: the machine
is shared and its load changes between runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.builds import (  # noqa: E402
    ADDR,
    PY,
    builds_argument,
    chosen_builds,
    each_build,
    self_signed,
    start_backend,
    start_nsproxy,
    tenant_netns,
)
from bench.measure import cpu_seconds, process_tree, rss_kb  # noqa: E402
from tools.sandbox import Sandbox  # noqa: E402

PORTS = {"http": 80, "https": 443}
STALLED_PATH = "/chunked?n=256&size=65536"  # 16 MiB
BULK_PATH = "/chunked?n=16384&size=65536"  # 1 GiB
# Opens argv[1] connections to ADDR:argv[2] (TLS when argv[3] == "https"), sends one GET on
# each and reads nothing; prints "ready" once all are sent, then waits for stdin to close.
STALLED_CLIENTS = f"""
import socket, ssl, sys
count, port, scheme = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
held = []
for _ in range(count):
    sock = socket.socket()
    # A small receive window: the response waits in the proxy, not in this socket's queue.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("{ADDR}", port))
    if scheme == "https":
        sock = context.wrap_socket(sock, server_hostname="t1.example")
    sock.sendall(b"GET {STALLED_PATH} HTTP/1.1\\r\\nHost: t1.example\\r\\n\\r\\n")
    held.append(sock)
print("ready", flush=True)
sys.stdin.read()
"""


def _stalled(sb, scheme: str, count: int, settle: float, daemon: list[int]) -> float:
    before = rss_kb(daemon)
    clients = sb.popen(
        ["ip", "netns", "exec", "t1", "taskset", "-c", "1", PY, "-c", STALLED_CLIENTS,
         str(count), str(PORTS[scheme]), scheme],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert clients.stdout.readline().strip() == "ready"
    time.sleep(settle)
    after = rss_kb(daemon)
    clients.stdin.close()
    clients.wait(timeout=60)
    time.sleep(settle)  # the proxy closes its side of the connections
    return (after - before) / count


def _bulk(sb, scheme: str, daemon: list[int]) -> float:
    before = cpu_seconds(daemon)
    curl = sb.run(
        ["ip", "netns", "exec", "t1", "taskset", "-c", "1", "curl", "-sSk", "-o", "/dev/null",
         "-w", "%{size_download}", f"{scheme}://{ADDR}:{PORTS[scheme]}{BULK_PATH}"],
    )  # fmt: skip
    assert int(curl.stdout) == 1 << 30, curl.stdout
    return cpu_seconds(daemon) - before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    builds_argument(p)
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    builds = chosen_builds(args)
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        work = Path(tmp)
        certificate = self_signed(work)
        tenant_netns(sb)
        echo = start_backend(sb)
        listeners = [
            {"listen": f"{ADDR}:80", "protocol": "http"},
            {"listen": f"{ADDR}:443", "protocol": "https", "tls": {"certificates": [certificate]}},
        ]
        start = functools.partial(start_nsproxy, sb, work, listeners=listeners)
        for rnd, name, proc, _pid in each_build(builds, args.rounds, start):
            daemon = process_tree([proc.pid])
            for scheme in PORTS:
                row = {
                    "round": rnd,
                    "build": name,
                    "scheme": scheme,
                    "kb_per_stalled": round(
                        _stalled(sb, scheme, args.connections, args.settle, daemon)
                    ),
                    "cpu_s_per_gib": round(_bulk(sb, scheme, daemon), 2),
                }
                print(json.dumps(row), flush=True)
        echo.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
