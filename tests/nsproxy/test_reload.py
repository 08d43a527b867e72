"""Reload applies the difference: added tenants bind, removed ones drain, kept ones never fail."""

from __future__ import annotations

import json
import signal
import time

from conftest import ADDR, http_tenant

# Loops requests on the kept tenant until the stop file appears: a fresh connection every third
# request, the others over one keep-alive connection opened before the first reload.
CLIENT = """
import http.client, json, os, sys, time
stop, out, ADDR = sys.argv[1], sys.argv[2], sys.argv[3]
ok = fail = 0
errors = []
keep = http.client.HTTPConnection(ADDR, 80, timeout=10)
i = 0
while not os.path.exists(stop) or i < 50:
    i += 1
    conn = keep if i % 3 else http.client.HTTPConnection(ADDR, 80, timeout=10)
    try:
        conn.request("GET", f"/loop/{i}")
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200 and body["server"] == "echo@9601", (r.status, body)
        ok += 1
    except Exception as exc:
        fail += 1
        errors.append(repr(exc))
        if conn is keep:
            keep = http.client.HTTPConnection(ADDR, 80, timeout=10)
    if conn is not keep:
        conn.close()
    time.sleep(0.005)
json.dump({"ok": ok, "fail": fail, "errors": errors[:5]}, open(out, "w"))
"""


def test_reload_adds_removes_and_keeps_tenants_with_zero_failed_requests(proxy, tmp_path):
    proxy.add_netns("keep", "gone", "new", "changed")
    proxy.start_echo(
        "echo",
        "127.0.0.1:9601",
        "127.0.0.1:9602",
        "127.0.0.1:9603",
        "127.0.0.1:9604",
        "127.0.0.1:9605",
    )
    keep = http_tenant("keep", ["127.0.0.1:9601"])
    gone = http_tenant("gone", ["127.0.0.1:9602"])
    changed = http_tenant("changed", ["127.0.0.1:9604"])
    proxy.write_config([keep, gone, changed])
    proxy.start()
    before = proxy.status_json()
    assert before["generation"] == 1

    stop, out = tmp_path / "stop", tmp_path / "client.json"
    client = proxy.sb.popen(
        ["ip", "netns", "exec", "keep", "python3", "-c", CLIENT, str(stop), str(out), ADDR]
    )
    proxy.helpers.append(client)
    time.sleep(0.5)

    # Reload 1: remove "gone", add "new", change the upstream of "changed".
    changed2 = http_tenant("changed", ["127.0.0.1:9605"])
    proxy.write_config([keep, http_tenant("new", ["127.0.0.1:9603"]), changed2])
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "generation 2"
    assert proxy.get_json("new", f"http://{ADDR}/")["server"] == "echo@9603"
    assert proxy.get_json("changed", f"http://{ADDR}/")["server"] == "echo@9605"
    refused = proxy.curl("gone", f"http://{ADDR}/")
    assert refused.returncode == 7, refused  # curl: connection refused, nothing listens now

    # Reload 2 by SIGHUP: put "gone" back.
    proxy.write_config([keep, http_tenant("new", ["127.0.0.1:9603"]), changed2, gone])
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for(lambda s: s["generation"] == 3 and proxy.all_bound(s), "generation 3")
    assert proxy.get_json("gone", f"http://{ADDR}/")["server"] == "echo@9602"

    # Reload 3: the same file again changes nothing.
    assert proxy.reload().stdout.strip() == "generation 4"

    stop.write_text("")
    client.wait(timeout=60)
    result = json.loads(out.read_text())
    assert result["fail"] == 0, result
    assert result["ok"] >= 50
    after = proxy.status_json()
    # The kept tenant kept its namespace handle and its listener the whole time.
    assert (
        proxy.tenant_status("keep", after)["netns_inode"]
        == proxy.tenant_status("keep", before)["netns_inode"]
    )
    assert "1 added, 1 removed, 1 changed, 1 kept" in proxy.log()


def test_invalid_config_on_reload_is_refused_and_the_old_one_keeps_running(proxy):
    proxy.add_netns("solid")
    proxy.start_echo("echo", "127.0.0.1:9610")
    proxy.write_config([http_tenant("solid", ["127.0.0.1:9610"])])
    proxy.start()
    digest = proxy.status_json()["config_digest"]

    bad = http_tenant("solid", ["127.0.0.1:9610"])
    bad["routes"][0]["upstream"] = "nope"
    proxy.write_config([bad, http_tenant("extra", ["not-an-address"])])
    result = proxy.reload()
    assert result.returncode == 1
    assert "reload refused" in result.stderr
    assert "tenant 'solid': routes[0].upstream: unknown upstream 'nope'" in result.stderr
    assert "tenant 'extra': upstreams.app.servers[0]" in result.stderr
    status = proxy.status_json()
    assert status["generation"] == 1 and status["config_digest"] == digest
    assert [t["name"] for t in status["tenants"]] == ["solid"]
    assert "new configuration refused" in status["last_reload_error"]
    assert proxy.get_json("solid", f"http://{ADDR}/")["server"] == "echo@9610"
    assert "new configuration refused" in proxy.log()

    proxy.config_path.write_text("{not json")
    result = proxy.reload()
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    assert proxy.get_json("solid", f"http://{ADDR}/")["server"] == "echo@9610"
