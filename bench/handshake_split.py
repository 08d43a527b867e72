"""CPU per full TLS handshake in the serving process, nsproxy builds against HAProxy.

    .venv/bin/python bench/handshake_split.py                         # this tree and HAProxy
    .venv/bin/python bench/handshake_split.py --build old=/path/to/checkout/src/nsproxy
    .venv/bin/python bench/handshake_split.py --perf                  # + where it goes, by DSO

One tenant namespace with one RSA-2048 certificate, inside a throwaway sandbox
(tools/sandbox.py); the proxy pinned to CPU 0, one ``openssl s_time -new -www /`` client and
the backend on CPU 1. Each build (and HAProxy ``nbthread 1``) is started in turn, loaded for
``--seconds`` and stopped, ``--rounds`` times. CPU is read from ``/proc/PID/stat`` of the
process that serves (nsproxy's worker 0 when there is one, else the daemon; HAProxy's
process). With ``--perf``, ``perf record -e cpu-clock`` samples that process (software clock:
no hardware counters needed) and the report gives microseconds per handshake by DSO, which
separates the signature (libcrypto) from the rest. A narrower harness than the benchmark's
(4 clients on 4 tenants among N): it answers whether a build spends more per handshake, not
how the proxies compare at scale. Prints one JSON line per run.
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
    BACKEND,
    builds_argument,
    chosen_builds,
    each_build,
    self_signed,
    start_backend,
    start_nsproxy,
    tenant_netns,
)
from bench.contenders import haproxy_preamble  # noqa: E402
from bench.measure import cpu_seconds  # noqa: E402
from tools.sandbox import Sandbox  # noqa: E402


def _haproxy(sb: Sandbox, work: Path, certificate: dict) -> tuple:
    pem = work / "combined.pem"
    pem.write_bytes(Path(certificate["cert"]).read_bytes() + Path(certificate["key"]).read_bytes())
    conf = work / "haproxy.cfg"
    conf.write_text(
        haproxy_preamble(1)
        + f"""frontend fe
  bind {ADDR}:443 ssl crt {pem} namespace t1
  http-request set-header X-Nsproxy-Tenant t1
  default_backend be
backend be
  http-reuse always
  server s1 {BACKEND}
"""
    )
    proc = sb.popen(["taskset", "-c", "0", "haproxy", "-f", str(conf)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2)
    return proc, proc.pid


def _split(data: Path) -> dict:
    """DSO -> share of the samples in a perf.data."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-F", "overhead,dso"],
        capture_output=True,
        text=True,
    ).stdout
    shares = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            shares[m.group(2)] = float(m.group(1)) / 100
    return shares


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    builds_argument(p)
    p.add_argument("--no-haproxy", action="store_true")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--perf", action="store_true", help="split each run's CPU by DSO")
    args = p.parse_args()
    builds = chosen_builds(args)
    if not args.no_haproxy:
        builds["haproxy"] = None
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        work = Path(tmp)
        certificate = self_signed(work)
        tenant_netns(sb)
        echo = start_backend(sb)
        https = {"listen": f"{ADDR}:443", "protocol": "https",
                 "tls": {"certificates": [certificate]}}  # fmt: skip

        def start(src):
            if src is None:
                return _haproxy(sb, work, certificate)
            return start_nsproxy(sb, work, src, [https])

        for rnd, name, _proc, pid in each_build(builds, args.rounds, start):
            data = work / f"perf.{name}"
            perf = None
            if args.perf:
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-o",
                     str(data), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            before = cpu_seconds([pid])
            client = sb.run(
                ["ip", "netns", "exec", "t1", "taskset", "-c", "1", "openssl", "s_time",
                 "-connect", f"{ADDR}:443", "-new", "-time", str(args.seconds), "-www", "/"],
                check=False, capture_output=True, text=True,
            )  # fmt: skip
            cpu = cpu_seconds([pid]) - before
            if perf is not None:
                perf.send_signal(2)
                perf.wait()
            m = re.search(r"(\d+) connections in ([\d.]+)s", client.stdout)
            count = int(m.group(1)) if m else 0
            row = {
                "round": rnd,
                "build": name,
                "handshakes": count,
                "cpu_s": round(cpu, 2),
                "per_cpu_s": round(count / cpu) if cpu else None,
                "us_per_handshake": round(cpu / count * 1e6) if count else None,
            }
            if perf is not None and count:
                row["us_by_dso"] = {
                    dso: round(share * cpu / count * 1e6)
                    for dso, share in _split(data).items()
                    if share >= 0.005
                }
            print(json.dumps(row), flush=True)
        echo.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
