"""Starting one nsproxy build (a source folder, ``src/nsproxy`` of any checkout) with a tenant
or a few (``t1`` by default) inside a throwaway sandbox: the harness of the narrow benchmarks
that compare builds (handshake_split.py, connection_buffers.py, tenant_share.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = str(REPO / ".venv" / "bin" / "python")
ECHO = str(REPO / "tests" / "nsproxy" / "echo_server.py")
ADDR = "10.0.0.250"
BACKEND = "127.0.0.1:9400"


def tenant_netns(sb, names: tuple[str, ...] = ("t1",)) -> None:
    """A tenant namespace for each of ``names``, each with ADDR on its loopback."""
    for name in names:
        sb.sh(f"ip netns add {name} && ip -n {name} link set lo up && "
              f"ip -n {name} addr add {ADDR}/32 dev lo")  # fmt: skip


def start_backend(sb, cpus: str = "1") -> subprocess.Popen:
    """tests/nsproxy/echo_server.py on BACKEND in the sandbox's own namespace (its reports of
    clients gone mid-response, which the benchmarks cause, are not shown)."""
    echo = sb.popen(["taskset", "-c", cpus, PY, ECHO, "echo", BACKEND],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert echo.stdout.readline().strip() == "ready"
    return echo


def start_nginx_backend(sb, work: Path, cpus: str = "1") -> subprocess.Popen:
    """nginx on BACKEND in the sandbox's own namespace, answering every request with "ok":
    a backend that is never the bottleneck (echo_server.py is a thread per connection with a
    listen backlog of 5)."""
    temp = " ".join(f"{kind}_temp_path {work}/nginx-{kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    conf = work / "backend-nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {work}/nginx.pid; error_log stderr error;\n"
        f"events {{ worker_connections 8192; }}\n"
        f"http {{ {temp} access_log off; keepalive_requests 10000000; keepalive_timeout 300s;\n"
        f'  server {{ listen {BACKEND} backlog=4096; location / {{ return 200 "ok\\n"; }} }}\n'
        f"}}\n"
    )
    proc = sb.popen(["taskset", "-c", cpus, "nginx", "-c", str(conf)])
    for _ in range(100):
        if sb.run(["bash", "-c", f"exec 3<>/dev/tcp/{BACKEND.replace(':', '/')}"],
                  check=False).returncode == 0:  # fmt: skip
            return proc
        time.sleep(0.05)
    raise RuntimeError("the nginx backend did not listen")


def self_signed(work: Path, key_type: str = "rsa:2048") -> dict:
    """{"cert", "key"} of a new self-signed certificate for t1.example."""
    cert, key = work / "c.pem", work / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", key_type, "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=t1.example"],
                   check=True, capture_output=True)  # fmt: skip
    return {"cert": str(cert), "key": str(key)}


def start_nsproxy(sb, work: Path, src: str, listeners: list[dict], cpus: str = "0",
                  tenants: tuple[str, ...] = ("t1",)) -> tuple:  # fmt: skip
    """Run the build in ``src`` with ``tenants`` (each in its namespace of the same name, with
    ``listeners``; every request to BACKEND) and one worker, pinned to ``cpus``. Returns
    (process, PID of the process that serves: worker 0 when the build has workers, else the
    daemon). A build from before binder and workers gets the same config without
    ``workers``."""
    config = {
        "instance": "bench",
        "admin_socket": str(work / "bench.sock"),
        "workers": 1,
        "tenants": [
            {
                "name": name,
                "netns": name,
                "listeners": listeners,
                "routes": [{"host": "*", "path_prefix": "/", "upstream": "app"}],
                "upstreams": {"app": {"netns": None, "servers": [BACKEND]}},
            }
            for name in tenants
        ],
    }
    path = work / "nsproxy.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": src}
    if subprocess.run([PY, "-m", "nsproxy", "check", str(path)], capture_output=True,
                      env=env).returncode:  # fmt: skip
        del config["workers"]
        path.write_text(json.dumps(config))
    argv = ["taskset", "-c", cpus, PY, "-m", "nsproxy", "run", "--config", str(path)]
    proc = sb.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    time.sleep(4)
    status = sb.run(
        [PY, "-m", "nsproxy", "status", "--socket", str(work / "bench.sock"), "--json"],
        env=env,
        check=False,
    )
    pid = proc.pid
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        pid = json.loads(status.stdout)["workers"][0]["pid"]
    return proc, pid


def each_build(builds: dict, rounds: int, start):
    """Every build in turn, ``rounds`` times over: yields (round, name, process, PID that
    serves) from ``start(src)`` (which returns the last two, as :func:`start_nsproxy`
    does), and stops the process once the caller's turn is over, however it ends."""
    for rnd in range(rounds):
        for name, src in builds.items():
            proc, pid = start(src)
            try:
                yield rnd, name, proc, pid
            finally:
                proc.terminate()
                proc.wait(timeout=20)


def builds_argument(parser) -> None:
    parser.add_argument("--build", action="append", default=[],
                        help="NAME=PATH of an nsproxy source folder (src/nsproxy); default: "
                             "this tree")  # fmt: skip


def chosen_builds(args) -> dict[str, str]:
    return dict(b.split("=", 1) for b in args.build) or {"tree": str(REPO / "src" / "nsproxy")}
