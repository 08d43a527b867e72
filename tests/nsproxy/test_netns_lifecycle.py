"""Namespaces that are missing, not configured yet, or deleted and recreated."""

from __future__ import annotations

import time

from conftest import ADDR, http_tenant


def _listener(proxy, name):
    return proxy.tenant_status(name)["listeners"][0]


def test_missing_namespace_does_not_stop_others_and_is_served_once_created(proxy):
    proxy.add_netns("present")
    proxy.start_echo("echo", "127.0.0.1:9701", "127.0.0.1:9702")
    proxy.write_config(
        [http_tenant("present", ["127.0.0.1:9701"]), http_tenant("late", ["127.0.0.1:9702"])]
    )
    proxy.start(wait_bound=False)
    status = proxy.wait_for(
        lambda s: proxy.tenant_status("present", s)["state"] == "serving", "present serving"
    )
    late = proxy.tenant_status("late", status)
    assert late["state"] == "waiting"
    assert late["listeners"][0]["state"] == "waiting"
    assert "/run/netns/late does not exist" in late["last_error"]
    assert proxy.get_json("present", f"http://{ADDR}/")["server"] == "echo@9701"
    table = proxy.nsproxy("status", "--socket", proxy.socket).stdout
    assert "late" in table and "waiting" in table and "does not exist" in table

    proxy.add_netns("late")
    proxy.wait_for(lambda s: proxy.tenant_status("late", s)["state"] == "serving", "late bound")
    assert proxy.get_json("late", f"http://{ADDR}/")["server"] == "echo@9702"
    assert "tenant late: network namespace /run/netns/late does not exist" in proxy.log()


def test_address_not_configured_yet_is_retried_until_it_appears(proxy):
    proxy.add_netns("noaddr", address=None)
    proxy.start_echo("echo", "127.0.0.1:9711")
    proxy.write_config([http_tenant("noaddr", ["127.0.0.1:9711"])])
    proxy.start(wait_bound=False)
    status = proxy.wait_for(
        lambda s: proxy.tenant_status("noaddr", s)["last_error"] is not None, "an error"
    )
    listener = proxy.tenant_status("noaddr", status)["listeners"][0]
    assert listener["state"] == "waiting"
    assert "address not available" in listener["error"]
    proxy.sb.sh(f"ip -n noaddr addr add {ADDR}/32 dev lo")
    proxy.wait_for(lambda s: _bound(proxy, s, "noaddr"), "bound after the address appeared")
    assert proxy.get_json("noaddr", f"http://{ADDR}/")["server"] == "echo@9711"


def _bound(proxy, status, name):
    return proxy.tenant_status(name, status)["listeners"][0]["state"] == "bound"


def test_deleted_and_recreated_namespace_is_served_again(proxy):
    proxy.add_netns("box", "steady")
    proxy.start_echo("echo", "127.0.0.1:9721", "127.0.0.1:9722")
    proxy.write_config(
        [http_tenant("box", ["127.0.0.1:9721"]), http_tenant("steady", ["127.0.0.1:9722"])]
    )
    proxy.start()
    first_inode = proxy.tenant_status("box")["netns_inode"]
    assert proxy.get_json("box", f"http://{ADDR}/")["server"] == "echo@9721"

    proxy.sb.sh("ip netns del box")
    proxy.wait_for(lambda s: proxy.tenant_status("box", s)["state"] == "waiting", "box waiting")
    assert proxy.get_json("steady", f"http://{ADDR}/")["server"] == "echo@9722"

    assert "network namespace /run/netns/box disappeared" in proxy.log()
    proxy.add_netns("box")  # a container restart: same name, new namespace
    proxy.wait_for(lambda s: _bound(proxy, s, "box"), "box rebound")
    # The client runs in the new namespace: an answer proves the listener was rebuilt there.
    # (The inode number may be reused: the old namespace was released and freed.)
    assert proxy.get_json("box", f"http://{ADDR}/")["server"] == "echo@9721"
    assert isinstance(first_inode, int)


def test_namespace_replaced_without_a_gap_is_rebound_to_the_new_one(proxy):
    proxy.add_netns("swap")
    proxy.start_echo("echo", "127.0.0.1:9731")
    proxy.write_config([http_tenant("swap", ["127.0.0.1:9731"])])
    proxy.start()
    first_inode = proxy.tenant_status("swap")["netns_inode"]
    # Replace in one shell command, faster than the daemon's one-second look.
    proxy.sb.sh(
        f"ip netns del swap && ip netns add swap && ip -n swap link set lo up && "
        f"ip -n swap addr add {ADDR}/32 dev lo"
    )
    deadline = time.monotonic() + 20
    while "network namespace was replaced" not in proxy.log() and (
        "network namespace /run/netns/swap disappeared" not in proxy.log()
    ):
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.2)
    proxy.wait_for(lambda s: _bound(proxy, s, "swap"), "rebound in the new namespace")
    assert proxy.get_json("swap", f"http://{ADDR}/")["server"] == "echo@9731"
    assert isinstance(first_inode, int)
