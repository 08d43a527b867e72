"""Red-team reproductions for the active health checks (branch redteam-health).

Each test states the invariant the daemon should keep; on the code at a78a35f they fail and
their assertion message shows what went wrong. Real daemon, real namespaces, real upstreams.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ADDR, http_tenant

SERVERS = 24  # more than the socket stock holds (2..9) plus one refill (8)


@pytest.mark.xfail(strict=True, reason="probes starve the socket stock (redteam-health finding 1)")
def test_every_server_of_a_big_netns_upstream_stays_up_while_all_answer(proxy):
    """24 healthy servers inside the tenant's namespace, one tcp check: every one must stay up.

    At a78a35f the check probes all servers at once (asyncio.gather); the probes share the
    worker's socket stock for the namespace: the first few pop the stocked sockets, the rest
    wait on ONE refill of BATCH (8) sockets, and every waiter beyond that gets StockError,
    which counts as a failed check. The same trailing servers lose every round: after ``fall``
    rounds they are marked down for every worker, although each of them answers."""
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


def test_after_a_reload_moves_an_upstream_to_another_namespace_no_request_goes_to_the_old(proxy):
    """Not the health checks' own code, but the socket stock they (and requests) take from.

    Upstream ``app`` of t1 is moved by a reload from namespace ``t2up`` (where tenant t2's
    upstream also is) to ``new``; the same address answers in both. Every request of t1 after
    the reload must be served from ``new``. At a78a35f the worker's stock still maps
    (t1, app) to the identity of ``t2up`` (the binder drops a namespace's stock only when no
    upstream names it any more: binder/sockets.py keep_only) and hands out the sockets it
    holds there (up to 9, for up to 60 s): t1's requests (and probes) reach t2's server
    (DESIGN.md: a tenant can never reach another tenant's upstream)."""
    proxy.add_netns("t1", "t2")
    proxy.add_netns("t2up", "new", address=None)
    proxy.start_echo("T2", "127.0.0.1:9900", netns="t2up")
    proxy.start_echo("NEW", "127.0.0.1:9900", netns="new")
    t1 = http_tenant("t1", ["127.0.0.1:9900"], upstream_netns="t2up")
    t2 = http_tenant("t2", ["127.0.0.1:9900"], upstream_netns="t2up")
    proxy.write_config([t1, t2], workers=1)
    proxy.start()
    first = proxy.get_json("t1", f"http://{ADDR}/before")
    assert first["server"] == "T2@9900"
    t1["upstreams"]["app"]["netns"] = "new"
    proxy.write_config([t1, t2], workers=1)
    assert proxy.reload().returncode == 0, proxy.log()
    served = [proxy.get_json("t1", f"http://{ADDR}/after{i}")["server"] for i in range(5)]
    assert served == ["NEW@9900"] * 5, served


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


@pytest.mark.xfail(strict=True, reason="one log line per transition, unbounded (finding 5)")
def test_a_flapping_upstream_cannot_flood_the_daemon_log(proxy):
    """A tenant's own upstream answers its checks 200 and 503 in turn (rise 1, fall 1,
    interval 0.1 s: all allowed by the schema). The daemon log is shared by every tenant (and
    journald drops a unit's lines past its rate limit), so one tenant's server must not be able
    to write lines at the probe rate. accept.py bounds its refusal lines to one per tenant per
    10 s; at a78a35f health_check.py logs every transition: about 10 lines per second per
    server, without end."""
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


@pytest.mark.xfail(strict=True, reason="an upgrade starts a fresh health table (finding 6)")
def test_an_upgrade_keeps_a_failing_server_out(proxy):
    """B answers its checks 503 and is marked down; ``nsproxy upgrade`` (same build) must not
    send it requests. At a78a35f the new binder makes a new table (README: "an upgrade's new
    process starts its checks afresh"), so the new workers route to B until ``fall`` checks
    have failed again (here 3 x 1 s; with the defaults 15 s, with fall 100 and interval 3600
    s, days) while the status shows it healthy."""
    from test_health_checks import server_status, start_server

    proxy.add_netns("t1")
    a, b = "127.0.0.1:9771", "127.0.0.1:9772"
    start_server(proxy, "A", a)
    start_server(proxy, "B", b, mode="503")
    tenant = http_tenant("t1", [a, b])
    check = {"type": "http", "path": "/health", "interval": 1, "timeout": 0.5, "fall": 3}
    tenant["upstreams"]["app"]["health_check"] = check
    proxy.write_config([tenant], workers=1)
    proxy.start()
    proxy.wait_for(lambda s: not server_status(proxy, "t1", "app", b, s)["healthy"], "B down")
    upgrade = proxy.nsproxy("upgrade", "--socket", proxy.socket)
    assert upgrade.returncode == 0, upgrade.stderr
    served = []
    for i in range(8):
        served.append(proxy.curl("t1", f"http://{ADDR}/after-upgrade-{i}").stdout)
        time.sleep(0.3)
    assert served == ["A"] * 8, served


@pytest.mark.xfail(strict=True, reason="a reload of a listener forgets the checks (finding 3)")
def test_a_reload_that_changes_only_a_listener_keeps_the_upstream_checks_state(proxy):
    """README: "unchanged upstreams keep both" (checks and state). A reload that changes only
    t1's listener port leaves upstream ``app`` unchanged, so B (answering its checks 503)
    must stay down. At a78a35f worker 0 applies the generation before the new listener's
    socket is served, Prober.reconcile sees no served listener, stops the check with
    forget=True and removes B from the table: B is healthy for every worker (and gets
    requests) until ``fall`` checks fail again, after every such reload."""
    from test_health_checks import server_status, start_server

    proxy.add_netns("t1")
    a, b = "127.0.0.1:9781", "127.0.0.1:9782"
    start_server(proxy, "A", a)
    start_server(proxy, "B", b, mode="503")
    tenant = http_tenant("t1", [a, b])
    check = {"type": "http", "path": "/health", "interval": 1, "timeout": 0.5, "fall": 3}
    tenant["upstreams"]["app"]["health_check"] = check
    proxy.write_config([tenant], workers=1)
    proxy.start()
    proxy.wait_for(lambda s: not server_status(proxy, "t1", "app", b, s)["healthy"], "B down")
    tenant["listeners"][0]["listen"] = f"{ADDR}:8080"
    proxy.write_config([tenant], workers=1)
    assert proxy.reload().returncode == 0, proxy.log()
    assert server_status(proxy, "t1", "app", b) == {
        "address": b, "healthy": False, "last_error": "status 503, expected 2xx"}  # fmt: skip
