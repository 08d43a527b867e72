"""Red-team reproductions for the active health checks (branch redteam-health).

Each test states the invariant the daemon should keep; on the code at a78a35f they fail and
their assertion message shows what went wrong. Real daemon, real namespaces, real upstreams.
"""

from __future__ import annotations

import time

import pytest
from conftest import ADDR, http_tenant


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
