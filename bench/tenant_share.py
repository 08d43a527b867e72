"""What one busy tenant costs another on the same worker: nsproxy builds side by side.

    .venv/bin/python bench/tenant_share.py
    .venv/bin/python bench/tenant_share.py --build old=/path/to/checkout/src/nsproxy \\
        --build new=src/nsproxy

Two tenants, ``noisy`` and ``quiet``, each with an http listener, in a throwaway sandbox
(tools/sandbox.py); the proxy pinned to CPU 0 with one worker, the backend (nginx) and the
clients (wrk) on CPU 1. For each build, ``--rounds``
times:

- ``noisy_alone``: ``noisy`` runs ``wrk -c --noisy-connections`` (keep-alive, each connection
  one request after the other) for ``--seconds``, nothing else: what sharing costs a tenant
  with the worker to itself;
- ``alone``: ``quiet`` runs ``wrk -c --quiet-connections`` for ``--seconds``, nothing else;
- ``contended``: the same while ``noisy`` runs as in ``noisy_alone``.

With ``--noisy hello`` the noisy tenant's load is a TLS ClientHello flood instead
(``bench/hello_flood.py``, ``--hello-connections`` threads on its https listener, RSA-2048):
each connection costs the proxy a full handshake's key exchange and signature, and its client
almost nothing. Its figures are then the connections answered and their rate.

Prints one JSON line per build and round: each run's requests per second, latency
percentiles (ms) and failed requests, and
``quiet_kept``: the quiet tenant's contended rate over its rate alone. With the loop shared per
connection, a tenant with 1 connection against one with 256 keeps about 1/257 of what its
requests got alone, however little it asks; shared per tenant, it keeps what its own
requests need while the noisy tenant takes the rest. Compare builds within one run: the
machine is shared and its load changes between runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
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
    start_nginx_backend,
    start_nsproxy,
    tenant_netns,
)
from tools.sandbox import Sandbox  # noqa: E402

TENANTS = ("noisy", "quiet")
HELLO_FLOOD = str(REPO / "bench" / "hello_flood.py")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_argv(tenant: str, connections: int, seconds: float) -> list[str]:
    return ["ip", "netns", "exec", tenant, "taskset", "-c", "1", "wrk", "--latency", "-t1",
            f"-c{connections}", f"-d{seconds}s", f"http://{ADDR}/"]  # fmt: skip


def wrk_figures(output: str) -> dict:
    """Requests per second, the 50/90/99 % latencies (ms) and the failed requests (non-2xx
    answers and socket errors) of one wrk run's report."""
    figures = {"rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)))}
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)  # fmt: skip
    figures["failed"] = (int(failed.group(1)) if failed else 0) + (
        sum(map(int, errors.groups())) if errors else 0
    )
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        figures[f"p{pct}_ms"] = round(float(value) * _UNITS[unit], 2)
    return figures


def hello_argv(connections: int, seconds: float) -> list[str]:
    return ["ip", "netns", "exec", "noisy", "taskset", "-c", "1", PY, HELLO_FLOOD, ADDR, "443",
            str(connections), str(seconds)]  # fmt: skip


def _noisy(sb, args, seconds: float) -> tuple:
    """The noisy tenant's load: (process, function of its output giving its figures)."""
    if args.noisy == "hello":
        argv, figures = hello_argv(args.hello_connections, seconds), json.loads
    else:
        argv, figures = wrk_argv("noisy", args.noisy_connections, seconds), wrk_figures
    return sb.popen(argv, stdout=subprocess.PIPE, text=True), figures


def _round(sb, args) -> dict:
    noisy, figures = _noisy(sb, args, args.seconds)
    noisy_alone = figures(noisy.communicate(timeout=args.seconds + 30)[0])
    alone = wrk_figures(sb.run(wrk_argv("quiet", args.quiet_connections, args.seconds)).stdout)
    noisy, figures = _noisy(sb, args, args.seconds + 2)
    time.sleep(1)
    contended = wrk_figures(sb.run(wrk_argv("quiet", args.quiet_connections, args.seconds)).stdout)
    noisy_out, _ = noisy.communicate(timeout=args.seconds + 30)
    return {
        "noisy_alone": noisy_alone,
        "quiet_alone": alone,
        "quiet_contended": contended,
        "noisy_contended": figures(noisy_out),
        "quiet_kept": round(contended["rps"] / alone["rps"], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    builds_argument(p)
    p.add_argument(
        "--noisy",
        choices=("wrk", "hello"),
        default="wrk",
        help="the noisy tenant's load: keep-alive requests (wrk), or a TLS ClientHello flood "
        "(bench/hello_flood.py) on its https listener",
    )
    p.add_argument("--noisy-connections", type=int, default=256)
    p.add_argument("--hello-connections", type=int, default=16)
    p.add_argument("--quiet-connections", type=int, default=1)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    builds = chosen_builds(args)
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        work = Path(tmp)
        tenant_netns(sb, TENANTS)
        echo = start_nginx_backend(sb, work)
        listeners = [
            {"listen": f"{ADDR}:80", "protocol": "http"},
            {"listen": f"{ADDR}:443", "protocol": "https",
             "tls": {"certificates": [self_signed(work)]}},
        ]  # fmt: skip
        start = functools.partial(start_nsproxy, sb, work, listeners=listeners, tenants=TENANTS)
        for rnd, name, _proc, _pid in each_build(builds, args.rounds, start):
            row = {"round": rnd, "build": name, **_round(sb, args)}
            print(json.dumps(row), flush=True)
        echo.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
