"""Red-team reproductions for the active health checks (branch redteam-health).

Each test states the invariant the daemon should keep; on the code at a78a35f they fail and
their assertion message shows what went wrong. Real daemon, real namespaces, real upstreams.
"""

from __future__ import annotations

import time

from conftest import ADDR, http_tenant

SERVERS = 24  # more than the socket stock holds (2..9) plus one refill (8)


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
