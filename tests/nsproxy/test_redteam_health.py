"""Red-team reproductions for the active health checks (branch redteam-health).

Each test states the invariant the daemon should keep; on the code at a78a35f they fail and
their assertion message shows what went wrong. Real daemon, real namespaces, real upstreams.
"""

from __future__ import annotations

import time

from conftest import ADDR, http_tenant

SERVERS = 24  # more servers in one netns upstream than the socket stock holds (2..9) plus a batch (8)


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
