"""Active health checks, end to end: a real daemon (two workers), real upstream processes in the
host namespace and inside the tenant's namespace, a real client sending requests throughout.

The daemon always runs two workers here: one probes and every worker routes by what it found
(the shared table), so the file runs in the two-worker pass of scripts/test.sh only.

The upstream is health_upstream.py: it logs every request it receives (the server-side count)
and answers its health path as a file says (ok, a status, or a head that never ends).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ADDR, http_tenant

HEALTH_UP = str(Path(__file__).with_name("health_upstream.py"))
METRICS_ADDR = "127.0.0.1:9119"
INTERVAL, TIMEOUT, RISE, FALL = 0.2, 0.15, 3, 2
CHECK = {"type": "http", "path": "/health", "interval": INTERVAL, "timeout": TIMEOUT,
         "rise": RISE, "fall": FALL}  # fmt: skip

# Requests on fresh connections (so both workers serve them), one line each: time, status, body.
CLIENT = """
import os, sys, time, urllib.request
stop = sys.argv[1]
while not os.path.exists(stop):
    t = time.time()
    try:
        with urllib.request.urlopen("http://ADDR/data", timeout=5) as r:
            print(t, r.status, r.read().decode(), flush=True)
    except Exception as exc:
        print(t, getattr(exc, "code", 0), "-", flush=True)
    time.sleep(0.02)
""".replace("ADDR", ADDR)


def start_server(proxy, name: str, address: str, netns=None, mode: str = "ok"):
    """health_upstream.py NAME ADDRESS, answering its health path as ``mode`` says."""
    set_mode(proxy, name, mode)
    argv = [sys.executable, HEALTH_UP, name, address, str(proxy.dir / f"{name}.mode")]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "HEALTH_LOG": str(proxy.dir / "health.log")}
    proc = proxy.sb.popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    proxy.helpers.append(proc)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def set_mode(proxy, name: str, mode: str) -> None:
    (proxy.dir / f"{name}.mode").write_text(mode)


def received(proxy, name: str) -> list[dict]:
    """What server ``name`` received, in order."""
    path = proxy.dir / "health.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["server"] == name]


def server_status(proxy, tenant: str, upstream: str, address: str, status=None) -> dict:
    ups = proxy.tenant_status(tenant, status)["upstreams"]
    servers = next(u for u in ups if u["name"] == upstream)["servers"]
    return next(s for s in servers if s["address"] == address)


def gauge(proxy, tenant: str, upstream: str, server: str) -> float:
    text = proxy.sb.run(["curl", "-sS", "--max-time", "10", f"http://{METRICS_ADDR}/metrics"])
    series = (
        f'nsproxy_upstream_server_up{{tenant="{tenant}",upstream="{upstream}",server="{server}"}}'
    )
    for line in text.stdout.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in the scrape:\n{text.stdout}")


@pytest.mark.parametrize("upstream_netns", [None, "t1"], ids=["host-upstream", "netns-upstream"])
def test_a_server_marked_down_gets_no_request_and_returns_after_rise_successes(
    proxy, upstream_netns
):
    proxy.add_netns("t1")
    a, b = "127.0.0.1:9721", "127.0.0.1:9722"
    start_server(proxy, "A", a, upstream_netns)
    server_b = start_server(proxy, "B", b, upstream_netns)
    tenant = http_tenant("t1", [a, b], upstream_netns=upstream_netns)
    tenant["upstreams"]["app"]["health_check"] = CHECK
    proxy.write_config([tenant], metrics={"listen": METRICS_ADDR}, workers=2)
    proxy.start()
    proxy.wait_for(lambda s: received(proxy, "B"), "a check of B", 10)
    # B goes away: the checks mark it down with why. (No request is sent meanwhile, so that
    # passive health, which would keep B out for 10 s after a refused connect, plays no part.)
    server_b.terminate()
    server_b.wait(timeout=5)
    down = proxy.wait_for(
        lambda s: server_status(proxy, "t1", "app", b, s)["last_error"] == "connect refused",
        "B marked down by its checks",
    )
    assert server_status(proxy, "t1", "app", b, down)["healthy"] is False
    assert server_status(proxy, "t1", "app", a, down) == {
        "address": a, "healthy": True, "last_error": None}  # fmt: skip
    assert (gauge(proxy, "t1", "app", b), gauge(proxy, "t1", "app", a)) == (0, 1)
    # B comes back but fails its check: still down, the status says why.
    start_server(proxy, "B", b, upstream_netns, mode="503")
    proxy.wait_for(
        lambda s: (
            server_status(proxy, "t1", "app", b, s)["last_error"] == "status 503, expected 2xx"
        ),
        "B failing with 503",
    )
    stop = proxy.dir / "client.stop"
    client = proxy.sb.popen(
        ["ip", "netns", "exec", "t1", sys.executable, "-c", CLIENT, str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(client)
    try:
        time.sleep(1.0)  # the client sends while B is up but marked down
        switched = time.time()
        set_mode(proxy, "B", "ok")
        up = proxy.wait_for(
            lambda s: server_status(proxy, "t1", "app", b, s)["healthy"], "B up again"
        )
        assert server_status(proxy, "t1", "app", b, up)["last_error"] is None
        assert gauge(proxy, "t1", "app", b) == 1
        deadline = time.monotonic() + 10
        while not [e for e in received(proxy, "B") if e["path"] == "/data"]:
            assert time.monotonic() < deadline, "B never used again"
            time.sleep(0.1)
    finally:
        stop.touch()
        client.wait(timeout=10)
    answers = [line.split(" ", 2) for line in client.stdout.read().splitlines()]
    at_b = received(proxy, "B")
    # While B was marked down (up, but answering its checks with 503), it received no request
    # but the checks, and the client was served by A, every time.
    while_down = [x for x in answers if float(x[0]) < switched]
    assert len(while_down) > 10
    assert {(x[1], x[2]) for x in while_down} == {("200", "A")}
    restarted = [e for e in at_b if e["answer"] == "503" or e["t"] >= switched]
    first_use = next(i for i, e in enumerate(restarted) if e["path"] == "/data")
    assert all(e["path"] == "/health" for e in restarted[:first_use])
    # Used again only after RISE successful checks in a row.
    oks = [e for e in restarted[:first_use] if e["answer"] == "ok"]
    assert len(oks) >= RISE, restarted[: first_use + 1]
    assert any(x[1:] == ["200", "B"] for x in answers if float(x[0]) > switched)
    assert {x[1] for x in answers} == {"200"}, [x for x in answers if x[1] != "200"]


def test_wrong_status_and_an_endless_head_fail_and_reload_keeps_or_stops_checks(proxy):
    proxy.add_netns("t1")
    app, wrong, endless, late = (f"127.0.0.1:{p}" for p in (9731, 9732, 9733, 9734))
    start_server(proxy, "app", app)
    start_server(proxy, "wrong", wrong, mode="503")
    start_server(proxy, "endless", endless, mode="endless")
    start_server(proxy, "late", late)
    tenant = http_tenant("t1", [app])
    tenant["upstreams"]["app"]["health_check"] = CHECK
    tenant["upstreams"]["wrong"] = {"servers": [wrong], "health_check": CHECK}
    tenant["upstreams"]["endless"] = {"servers": [endless], "health_check": CHECK}
    # A tenant whose namespace does not exist yet: its listener waits, its checks do not run.
    waiting = http_tenant("late", [late])
    waiting["upstreams"]["app"]["health_check"] = CHECK
    proxy.write_config([tenant, waiting], workers=2)
    proxy.start(wait_bound=False)
    status = proxy.wait_for(
        lambda s: (
            not server_status(proxy, "t1", "wrong", wrong, s)["healthy"]
            and not server_status(proxy, "t1", "endless", endless, s)["healthy"]
        ),
        "both marked down",
    )
    assert server_status(proxy, "t1", "wrong", wrong, status)["last_error"] == (
        "status 503, expected 2xx"
    )
    assert server_status(proxy, "t1", "endless", endless, status)["last_error"] == (
        f"timeout after {TIMEOUT} s"
    )
    served = proxy.curl("t1", f"http://{ADDR}/data")
    assert served.stdout == "app", served.stderr + proxy.log()
    # One probe per interval for the whole daemon (two workers), never one per worker.
    before, t0 = len(received(proxy, "app")), time.monotonic()
    time.sleep(2.0)
    probes, window = len(received(proxy, "app")) - before, time.monotonic() - t0
    assert 1 <= probes <= window / INTERVAL + 2, (probes, window)
    assert received(proxy, "late") == []
    # The namespace appears: the listener serves, and its checks begin.
    proxy.add_netns("late")
    proxy.wait_for(lambda s: received(proxy, "late"), "the late tenant's checks", 15)
    # Reload without "endless": its checks stop; "wrong" is unchanged and stays down at once.
    del tenant["upstreams"]["endless"]
    proxy.write_config([tenant, waiting], workers=2)
    assert proxy.reload().returncode == 0, proxy.log()
    kept = server_status(proxy, "t1", "wrong", wrong)
    assert kept == {"address": wrong, "healthy": False, "last_error": "status 503, expected 2xx"}
    time.sleep(0.5)  # a check that had begun before the reload ends
    stopped = len(received(proxy, "endless"))
    time.sleep(1.0)
    assert len(received(proxy, "endless")) == stopped
