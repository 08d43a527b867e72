"""One tenant's clients cannot take the process's connection budget from the others.

The daemon runs with a small descriptor limit, so that one tenant alone can reach it; the same
policy holds with the role's limit and more tenants (admission.py).
"""

from __future__ import annotations

import json

from conftest import ADDR, http_tenant

HOLD = f"""
import json, resource, socket, sys, time
count = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
held = []
for _ in range(count):
    try:
        s = socket.create_connection(("{ADDR}", 80), timeout=2)
        s.sendall(b"GET / HTTP/1.1\\r\\n")  # half a request head, never finished
        held.append(s)
    except OSError:
        pass
print(json.dumps({{"held": len(held)}}), flush=True)
sys.stdin.read()  # hold them until told
"""

NEW_CONNECTIONS = f"""
import http.client, json
statuses = []
for i in range(40):
    c = http.client.HTTPConnection("{ADDR}", 80, timeout=5)
    try:
        c.request("GET", "/new%d" % i, headers={{"Connection": "close"}})
        statuses.append(c.getresponse().status)
    except Exception as exc:
        statuses.append(repr(exc))
print(json.dumps(statuses))
"""


def test_a_tenant_under_its_share_gets_every_new_connection_while_another_holds_the_budget(
    proxy,
):
    proxy.add_netns("ta", "tb", "tc")
    proxy.start_echo("echo", "127.0.0.1:9950")
    proxy.write_config(
        [http_tenant(t, ["127.0.0.1:9950"]) for t in ("ta", "tb", "tc")],
        timeouts={"header_read": 60},
    )
    proxy.start(wrap=["prlimit", "--nofile=512:512"])
    holder = proxy.sb.popen(
        ["ip", "netns", "exec", "ta", "python3", "-c", HOLD, "2000"],
        stdin=-1,
        stdout=-1,
        text=True,
    )
    proxy.helpers.append(holder)
    held = json.loads(holder.stdout.readline())["held"]
    assert held >= 1500  # the kernel completed them; the daemon admits its budget's worth
    for tenant in ("tb", "tc"):
        statuses = json.loads(proxy.python(tenant, NEW_CONNECTIONS, timeout=120).stdout)
        assert statuses == [200] * 40, statuses
    status = proxy.tenant_status("ta")
    assert status["state"] == "serving"
    assert "connection refused" in proxy.log()
    holder.stdin.close()
    holder.wait(timeout=10)
    # Once the holder lets go, its tenant is served again too.
    assert json.loads(proxy.python("ta", NEW_CONNECTIONS, timeout=120).stdout) == [200] * 40
