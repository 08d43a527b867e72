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


SERVERS = 24  # more than the socket stock holds (2..9) plus one refill (8)


def test_every_server_of_a_big_netns_upstream_stays_up_while_all_answer(proxy):
    """24 healthy servers inside the tenant's namespace, one tcp check: every one must stay up.

    The probes share the worker's socket stock for the namespace (2..9 sockets, refilled 8 at
    a time). Probing all servers at once starved it: the waiters beyond one refill got
    StockError, counted as failed checks, and the same trailing servers were marked down. Now
    at most health_check.PARALLEL probes of an upstream run at once, and a probe that gets no
    socket counts for nothing."""
    proxy.add_netns("t1")
    ports = [9800 + i for i in range(SERVERS)]
    servers = [f"127.0.0.1:{p}" for p in ports]
    proxy.start_echo("big", *servers, netns="t1")
    tenant = http_tenant("t1", servers, upstream_netns="t1")
    tenant["upstreams"]["app"]["health_check"] = {
        "type": "tcp", "interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}  # fmt: skip
    proxy.write_config([tenant], workers=1)
    proxy.start()
    time.sleep(4.0)  # eight rounds of checks
    status = proxy.tenant_status("t1")
    down = [s for s in status["upstreams"][0]["servers"] if not s["healthy"]]
    assert down == [], f"{len(down)} of {SERVERS} answering servers marked down: {down}"
    served = proxy.curl("t1", f"http://{ADDR}/")
    assert served.returncode == 0, served.stderr


FLAPPING = """
import socket, sys, threading
server = socket.create_server(("127.0.0.1", 9950), backlog=128)
print("ready", flush=True)
n = 0
while True:
    conn, _ = server.accept()
    n += 1
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\n\\r\\n" if n % 2 else b"HTTP/1.1 503 No\\r\\n\\r\\n")
    except OSError:
        pass
    conn.close()
"""


def test_a_flapping_upstream_writes_at_most_one_transition_line_per_10_s(proxy):
    """A tenant's own upstream answers its checks 200 and 503 in turn (rise 1, fall 1,
    interval 0.1 s: all allowed by the schema). The daemon log is shared by every tenant (and
    journald drops a unit's lines past its rate limit), so one tenant's server must not be able
    to write lines at the probe rate: one transition line per tenant per 10 s (as accept.py
    bounds its refusal lines), while the transitions themselves still apply."""
    proxy.add_netns("t1")
    flapping = proxy.sb.popen(
        ["ip", "netns", "exec", "t1", sys.executable, "-c", FLAPPING],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy.helpers.append(flapping)
    assert flapping.stdout.readline().strip() == "ready"
    tenant = http_tenant("t1", ["127.0.0.1:9950"], upstream_netns="t1")
    tenant["upstreams"]["app"]["health_check"] = {
        "type": "http", "interval": 0.1, "timeout": 0.05, "rise": 1, "fall": 1}  # fmt: skip
    proxy.write_config([tenant], workers=1)
    proxy.start()
    time.sleep(5.0)
    lines = [
        line for line in proxy.log_path.read_text().splitlines() if "server 127.0.0.1:9950" in line
    ]
    assert len(lines) <= 5, f"{len(lines)} transition lines in 5 s, e.g. {lines[-2:]}"


def _serving_with_b_marked_down(proxy, port_a: int, port_b: int) -> tuple[dict, str]:
    """t1 served with upstream app = [A, B], B answering its http checks 503 until the checks
    (interval 1 s, fall 3) mark it down; (t1's config, B's address)."""
    proxy.add_netns("t1")
    a, b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    start_server(proxy, "A", a)
    start_server(proxy, "B", b, mode="503")
    tenant = http_tenant("t1", [a, b])
    check = {"type": "http", "path": "/health", "interval": 1, "timeout": 0.5, "fall": 3}
    tenant["upstreams"]["app"]["health_check"] = check
    proxy.write_config([tenant], workers=1)
    proxy.start()
    proxy.wait_for(lambda s: not server_status(proxy, "t1", "app", b, s)["healthy"], "B down")
    return tenant, b


def test_a_reload_that_changes_only_a_listener_keeps_the_upstream_checks_state(proxy):
    """README: "unchanged upstreams keep both" (checks and state). A reload that changes only
    t1's listener port leaves upstream ``app`` unchanged, so B (answering its checks 503)
    must stay down. Worker 0 applies the generation before the new listener's socket is
    served: the tenant is not served for that moment, which pauses its checks (state kept)
    rather than forgetting them."""

    tenant, b = _serving_with_b_marked_down(proxy, 9781, 9782)
    tenant["listeners"][0]["listen"] = f"{ADDR}:8080"
    proxy.write_config([tenant], workers=1)
    assert proxy.reload().returncode == 0, proxy.log()
    assert server_status(proxy, "t1", "app", b) == {
        "address": b, "healthy": False, "last_error": "status 503, expected 2xx"}  # fmt: skip


def test_an_upgrade_keeps_a_server_marked_down_out(proxy):
    """B answers its checks 503 and is marked down; ``nsproxy upgrade`` (same build) must not
    send it requests, and the status must still show it down. The old binder hands the health
    table's memfd to the new one; a fresh table would route to B until ``fall`` checks had
    failed again (with fall 100 and interval 3600 s, days)."""

    tenant, b = _serving_with_b_marked_down(proxy, 9771, 9772)
    upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    assert upgrade.returncode == 0, upgrade.stderr
    served = []
    for i in range(8):
        served.append(proxy.curl("t1", f"http://{ADDR}/after-upgrade-{i}").stdout)
        time.sleep(0.3)
    assert served == ["A"] * 8, served
    assert not server_status(proxy, "t1", "app", b)["healthy"]


def test_a_checked_upstream_whose_namespace_is_missing_is_marked_down(proxy):
    """The binder answers that the upstream's namespace cannot be opened: unlike its limits or
    silence (a probe that could not start, which counts for nothing), that says something about
    the upstream, so the checks mark its server down and say why, once."""
    proxy.add_netns("t1")
    server = "127.0.0.1:9790"
    tenant = http_tenant("t1", [server], upstream_netns="nowhere")
    tenant["upstreams"]["app"]["health_check"] = {
        "type": "tcp", "interval": 0.2, "timeout": 0.15, "rise": 1, "fall": 1}  # fmt: skip
    proxy.write_config([tenant], workers=1)
    proxy.start()
    proxy.wait_for(lambda s: not server_status(proxy, "t1", "app", server, s)["healthy"], "down")
    error = server_status(proxy, "t1", "app", server)["last_error"]
    assert error == (
        "upstream namespace unavailable: network namespace /run/netns/nowhere does not exist"
    ), error
