"""Upstream round-robin and passive health, per-tenant connection limit, drain on removal."""

from __future__ import annotations

import json
import subprocess
import time

from conftest import ADDR, http_tenant


def test_round_robin_skips_a_dead_server_and_status_marks_it_unhealthy(proxy):
    proxy.add_netns("rr")
    proxy.start_echo("echo", "127.0.0.1:9901", "127.0.0.1:9902")
    servers = ["127.0.0.1:9901", "127.0.0.1:9999", "127.0.0.1:9902"]  # 9999: nothing listens
    proxy.write_config([http_tenant("rr", servers)])
    proxy.start()
    code = f"""
import http.client, json
seen = []
for i in range(12):
    c = http.client.HTTPConnection("{ADDR}", 80, timeout=10)
    c.request("GET", "/", headers={{"Connection": "close"}})
    r = c.getresponse()
    seen.append([r.status, json.loads(r.read())["server"]])
print(json.dumps(seen))
"""
    seen = json.loads(proxy.python("rr", code).stdout)
    assert all(status == 200 for status, _ in seen), seen  # the dead server cost no request
    assert {server for _, server in seen} == {"echo@9901", "echo@9902"}
    health = proxy.tenant_status("rr")["upstreams"][0]["servers"]
    assert health == [
        {"address": "127.0.0.1:9901", "healthy": True, "last_error": None},
        {"address": "127.0.0.1:9999", "healthy": False, "last_error": "Connection refused"},
        {"address": "127.0.0.1:9902", "healthy": True, "last_error": None},
    ]


def test_connections_beyond_the_tenant_limit_get_503(proxy):
    proxy.add_netns("lim", "free")
    proxy.start_echo("echo", "127.0.0.1:9911")
    proxy.write_config(
        [http_tenant("lim", ["127.0.0.1:9911"]), http_tenant("free", ["127.0.0.1:9911"])],
        limits={"max_connections_per_tenant": 2},
    )
    proxy.start()
    holder = proxy.sb.popen(
        [
            "ip",
            "netns",
            "exec",
            "lim",
            "python3",
            "-c",
            # Two connections that have begun a request (silent ones stay with the kernel).
            f"import socket,time; a=socket.create_connection(('{ADDR}',80)); "
            f"b=socket.create_connection(('{ADDR}',80)); "
            "[c.sendall(b'GET / HTTP/1.1\\r\\n') for c in (a, b)]; time.sleep(0.5); "
            "print('up',flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(holder)
    assert holder.stdout.readline().strip() == "up"
    proxy.wait_for(lambda s: True, "status")
    third = proxy.curl("lim", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/")
    assert third.stdout == "503"
    # Another tenant is not affected by lim's limit.
    assert proxy.get_json("free", f"http://{ADDR}/")["server"] == "echo@9911"
    assert "max_connections_per_tenant reached" in proxy.log()


def test_removed_tenant_finishes_its_request_in_flight(proxy):
    proxy.add_netns("stay", "leave")
    proxy.start_echo("echo", "127.0.0.1:9921")
    stay = http_tenant("stay", ["127.0.0.1:9921"])
    proxy.write_config([stay, http_tenant("leave", ["127.0.0.1:9921"])])
    proxy.start()
    slow = proxy.sb.popen(
        [
            "ip",
            "netns",
            "exec",
            "leave",
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            f"http://{ADDR}/slow?delay=2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(slow)
    deadline = time.monotonic() + 10
    while "/slow" not in (proxy.echo_log.read_text() if proxy.echo_log.exists() else ""):
        assert time.monotonic() < deadline, "the slow request never reached the upstream"
        time.sleep(0.1)
    proxy.write_config([stay])
    assert proxy.reload().returncode == 0
    assert proxy.curl("leave", f"http://{ADDR}/").returncode == 7  # no longer accepting
    out, _ = slow.communicate(timeout=30)
    body, _, status = out.rpartition("\n")
    assert status == "200" and json.loads(body)["path"] == "/slow?delay=2"
    assert [t["name"] for t in proxy.status_json()["tenants"]] == ["stay"]


def test_slow_upstream_gets_504_and_silent_keep_alive_is_closed_after_idle(proxy):
    proxy.add_netns("slow")
    proxy.start_echo("echo", "127.0.0.1:9931")
    proxy.write_config([http_tenant("slow", ["127.0.0.1:9931"])], timeouts={"read": 1, "idle": 1})
    proxy.start()
    late = proxy.curl("slow", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ADDR}/?delay=4")
    assert late.stdout == "504"
    assert "504 upstream did not answer within the read timeout" in proxy.log()
    code = f"""
import json, socket
s = socket.create_connection(("{ADDR}", 80), timeout=20)
s.sendall(b"GET /first HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
f = s.makefile("rb")
first = f.readline()
length = 0
while (line := f.readline()) != b"\\r\\n":
    if line.lower().startswith(b"content-length:"):
        length = int(line.split(b":")[1])
f.read(length)
rest = f.read()  # returns when the proxy closes the idle connection (a timeout would raise)
print(json.dumps({{"first": first.decode().strip(), "rest": rest.decode()}}))
"""
    out = json.loads(proxy.python("slow", code).stdout)
    assert out["first"] == "HTTP/1.1 200 OK"
    assert out["rest"] == ""  # closed by the proxy (a client timeout would raise instead)


def test_a_burst_of_first_connections_to_an_upstream_in_a_namespace_is_served_whole(proxy):
    """The worker's stock of sockets inside the upstream's namespace is empty at the start,
    and 40 requests come at once, each needing its own upstream connection. The refill they
    wait for is sized to them (a fixed batch of 8 used to leave the ninth and later without
    a socket: 502), and what is left unused after the burst is bounded (worker/stock.py)."""
    proxy.add_netns("burst", "burst-up")
    proxy.start_echo("echo", "127.0.0.1:9903", netns="burst-up")
    proxy.write_config([http_tenant("burst", ["127.0.0.1:9903"], upstream_netns="burst-up")],
                       workers=1)  # fmt: skip
    proxy.start()
    code = f"""
import http.client, json, threading
codes, start = [], threading.Barrier(40)
def one():
    start.wait()
    c = http.client.HTTPConnection("{ADDR}", 80, timeout=20)
    c.request("GET", "/?delay=0.5", headers={{"Connection": "close"}})
    codes.append(c.getresponse().status)
threads = [threading.Thread(target=one) for _ in range(40)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(codes))
"""
    codes = json.loads(proxy.python("burst", code).stdout)
    assert codes == [200] * 40, (codes, proxy.log()[-2000:])
