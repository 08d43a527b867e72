"""Operations: status, metrics, access log, sd_notify, graceful SIGTERM, file limit."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import ADDR, NSPROXY, http_tenant


def _two_tenants(proxy, **top):
    proxy.add_netns("blue", "green")
    proxy.start_echo("echo", "127.0.0.1:9801", "127.0.0.1:9802")
    tenants = [http_tenant("blue", ["127.0.0.1:9801"]), http_tenant("green", ["127.0.0.1:9802"])]
    tenants[1]["routes"] = [{"host": "*", "path_prefix": "/app/", "upstream": "app"}]
    proxy.write_config(tenants, **top)


def test_status_reports_tenants_listeners_upstreams_as_table_and_json(proxy):
    _two_tenants(proxy)
    proxy.start()
    status = proxy.status_json()
    assert status["instance"] == "test"
    assert status["generation"] == 1
    assert status["config_digest"] == hashlib.sha256(proxy.config_path.read_bytes()).hexdigest()
    blue = proxy.tenant_status("blue", status)
    assert blue["netns"] == "blue" and blue["state"] == "serving"
    assert isinstance(blue["netns_inode"], int)
    assert blue["listeners"] == [
        {"listen": f"{ADDR}:80", "protocol": "http", "state": "bound", "error": None}
    ]
    assert blue["upstreams"] == [
        {
            "name": "app",
            "servers": [{"address": "127.0.0.1:9801", "healthy": True, "last_error": None}],
        }
    ]
    pid = status["pid"]
    assert proxy.proc.poll() is None and pid > 0

    table = proxy.nsproxy("status", "--config", str(proxy.config_path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"instance test  pid {pid}  generation 1")
    assert lines[1].split()[:4] == ["TENANT", "NETNS", "STATE", "LISTENER"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["blue"][:6] == ["blue", "blue", "serving", f"{ADDR}:80", "http", "bound"]
    assert rows["green"][6] == "app(1/1)"

    # A failing upstream server is reported unhealthy.
    proxy.write_config(
        [
            http_tenant("blue", ["127.0.0.1:9801"]),
            http_tenant("green", ["127.0.0.1:9899"]),  # nothing listens there
        ]
    )
    assert proxy.reload().returncode == 0
    bad = proxy.curl("green", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/")
    assert bad.stdout == "502"
    green = proxy.tenant_status("green")
    assert green["upstreams"][0]["servers"] == [
        {"address": "127.0.0.1:9899", "healthy": False, "last_error": "Connection refused"}
    ]


def test_metrics_per_tenant_and_json_access_log(proxy):
    _two_tenants(proxy, metrics={"listen": "127.0.0.1:9108"})
    proxy.start()
    for _ in range(3):
        proxy.get_json("blue", f"http://{ADDR}/x")
    proxy.get_json("green", f"http://{ADDR}/app/y")
    miss = proxy.curl("green", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/other")
    assert miss.stdout == "404"
    # Hold two connections open in blue while scraping: one has begun a request, the other
    # has sent nothing yet; the kernel keeps that one to itself (TCP_DEFER_ACCEPT), so it is
    # not counted, and costs the proxy nothing, until it speaks.
    holder = proxy.sb.popen(
        [
            "ip",
            "netns",
            "exec",
            "blue",
            "python3",
            "-c",
            f"import socket,time; s=socket.create_connection(('{ADDR}',80)); "
            f"s.sendall(b'GET /held HTTP/1.1\\r\\n'); q=socket.create_connection(('{ADDR}',80)); "
            "time.sleep(0.5); print('up',flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(holder)
    assert holder.stdout.readline().strip() == "up"
    text = proxy.sb.run(["curl", "-sS", "http://127.0.0.1:9108/metrics"]).stdout
    metrics = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            metrics[name] = float(value)
    assert metrics['nsproxy_requests_total{tenant="blue",code="2xx"}'] == 3
    assert metrics['nsproxy_requests_total{tenant="green",code="2xx"}'] == 1
    assert metrics['nsproxy_requests_total{tenant="green",code="4xx"}'] == 1  # the 404
    assert metrics['nsproxy_errors_total{tenant="green"}'] == 1
    assert metrics['nsproxy_errors_total{tenant="blue"}'] == 0
    assert metrics['nsproxy_active_connections{tenant="blue"}'] == 1
    assert metrics['nsproxy_active_connections{tenant="green"}'] == 0
    assert metrics['nsproxy_upstream_latency_seconds_count{tenant="blue"}'] == 3
    assert metrics['nsproxy_upstream_latency_seconds_bucket{tenant="blue",le="+Inf"}'] == 3
    assert "# TYPE nsproxy_upstream_latency_seconds histogram" in text

    deadline = time.monotonic() + 15  # the access log is flushed once a second
    while len(proxy.access_records()) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    records = proxy.access_records()
    assert len(records) == 5
    green = [r for r in records if r["tenant"] == "green"]
    assert {(r["path"], r["status"], r["upstream"]) for r in green} == {
        ("/app/y", 200, "app"),
        ("/other", 404, "-"),
    }
    for r in records:
        assert set(r) >= {
            "tenant",
            "listener",
            "upstream",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "client",
            "method",
            "path",
        }
        assert r["listener"] == f"{ADDR}:80" and r["bytes_out"] > 0


def test_sigterm_lets_the_request_in_flight_finish_then_exits(proxy):
    _two_tenants(proxy)
    proxy.start()
    slow = proxy.sb.popen(
        [
            "ip",
            "netns",
            "exec",
            "blue",
            "curl",
            "-sS",
            "--max-time",
            "20",
            f"http://{ADDR}/slow?delay=2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(slow)
    proxy.wait_for(lambda s: True, "status")  # the request is on its way
    time.sleep(0.7)
    proxy.proc.terminate()
    time.sleep(0.3)
    refused = proxy.curl("green", f"http://{ADDR}/app/")
    assert refused.returncode == 7  # no longer accepting
    reload = proxy.reload()  # still answered while draining, but nothing is re-bound or forked
    assert reload.returncode != 0 and "the daemon is stopping" in reload.stderr, reload
    assert proxy.curl("green", f"http://{ADDR}/app/").returncode == 7
    out, _ = slow.communicate(timeout=20)
    assert json.loads(out)["path"] == "/slow?delay=2"
    assert proxy.proc.wait(timeout=20) == 0
    assert "stopping: draining 1 connections" in proxy.log()


def test_sd_notify_ready_reloading_stopping_and_raised_file_limit(proxy):
    if not shutil.which("prlimit"):
        raise AssertionError("prlimit (util-linux) is missing")
    _two_tenants(proxy)
    short = tempfile.mkdtemp(prefix="nsn", dir="/tmp")
    path = f"{short}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        proxy.proc = proxy.sb.popen(
            ["prlimit", "--nofile=256:8192", NSPROXY, "run", "--config", str(proxy.config_path)],
            stdout=open(proxy.log_path, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env={"NOTIFY_SOCKET": path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert sock.recv(4096).decode().startswith("READY=1")
        pid = proxy.status_json()["pid"]
        limits = Path(f"/proc/{pid}/limits").read_text()
        nofile = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert nofile.split()[3:5] == ["8192", "8192"]
        assert proxy.reload().returncode == 0
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode().startswith("READY=1")
        proxy.proc.terminate()
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proxy.proc.wait(timeout=20) == 0
    finally:
        sock.close()
        shutil.rmtree(short)
