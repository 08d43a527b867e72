"""What one busy tenant costs another on the same worker: nsproxy builds side by side.

    .venv/bin/python bench/tenant_share.py
    .venv/bin/python bench/tenant_share.py --build old=/path/to/checkout/src/nsproxy \\
        --build new=src/nsproxy

Two tenants, ``noisy`` and ``quiet``, each with an http listener, in a throwaway sandbox
(tools/sandbox.py); the proxy pinned to CPU 0 with one worker, the backend (nginx) and the
clients (wrk) on CPU 1. For each build, ``--rounds``
times:

- ``alone``: ``quiet`` runs ``wrk -c --quiet-connections`` for ``--seconds``, nothing else;
- ``contended``: the same while ``noisy`` runs ``wrk -c --noisy-connections`` (keep-alive,
  each connection one request after the other, as many as the proxy answers).

Prints one JSON line per build and round: the quiet tenant's requests per second and latency
percentiles (ms) alone and contended, the noisy tenant's requests per second, and
``quiet_kept``: the quiet tenant's contended rate over its rate alone. With the loop shared per
connection, a tenant with 1 connection against one with 256 keeps about 1/257 of what its
requests got alone, however little it asks; shared per tenant, it keeps what its own
requests need while the noisy tenant takes the rest. Compare builds within one run: the
machine is shared and its load changes between runs.
"""

from __future__ import annotations

import argparse
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
    builds_argument,
    chosen_builds,
    start_nginx_backend,
    start_nsproxy,
    tenant_netns,
)
from tools.sandbox import Sandbox  # noqa: E402

TENANTS = ("noisy", "quiet")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_argv(tenant: str, connections: int, seconds: float) -> list[str]:
    return ["ip", "netns", "exec", tenant, "taskset", "-c", "1", "wrk", "--latency", "-t1",
            f"-c{connections}", f"-d{seconds}s", f"http://{ADDR}/"]  # fmt: skip


def wrk_figures(output: str) -> dict:
    """Requests per second and the 50/90/99 % latencies (ms) of one wrk run's report."""
    figures = {"rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)))}
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        figures[f"p{pct}_ms"] = round(float(value) * _UNITS[unit], 2)
    return figures


def _round(sb, args) -> dict:
    alone = wrk_figures(sb.run(wrk_argv("quiet", args.quiet_connections, args.seconds)).stdout)
    noisy = sb.popen(wrk_argv("noisy", args.noisy_connections, args.seconds + 2),
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1)
    contended = wrk_figures(sb.run(wrk_argv("quiet", args.quiet_connections, args.seconds)).stdout)
    noisy_out, _ = noisy.communicate(timeout=args.seconds + 30)
    return {
        "quiet_alone": alone,
        "quiet_contended": contended,
        "noisy_rps": wrk_figures(noisy_out)["rps"],
        "quiet_kept": round(contended["rps"] / alone["rps"], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    builds_argument(p)
    p.add_argument("--noisy-connections", type=int, default=256)
    p.add_argument("--quiet-connections", type=int, default=1)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    builds = chosen_builds(args)
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        work = Path(tmp)
        tenant_netns(sb, TENANTS)
        echo = start_nginx_backend(sb, work)
        listeners = [{"listen": f"{ADDR}:80", "protocol": "http"}]
        for rnd in range(args.rounds):
            for name, src in builds.items():
                proc, _ = start_nsproxy(sb, work, src, listeners, tenants=TENANTS)
                row = {"round": rnd, "build": name, **_round(sb, args)}
                print(json.dumps(row), flush=True)
                proc.terminate()
                proc.wait(timeout=20)
        echo.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
