"""The netlink modules run for real, as module processes, inside a throwaway network and mount
namespace (the ``sandbox`` fixture; root): input the validators must refuse before anything is
touched, and what the kernel keeps after a call that fails half-way. The host's interfaces are
never touched.

``ansible-test units`` runs the collection as built, without ``tests/conftest.py`` and the
sandbox tool: there these tests are skipped."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

try:
    from tests.conftest import REPO
    from tests.nsproxy.processes import wait_until
except ImportError:  # the built collection (ansible-test units): no sandbox helper
    pytest.skip(
        "needs the repository's sandbox helper (tests/conftest.py)", allow_module_level=True
    )

pytestmark = pytest.mark.sandbox

VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
COLLECTIONS = str(REPO / "build" / "collections")


def run_module(sb, module, args, check=False):
    """Run tenantnet.nsproxy.<module> with ``args`` inside sandbox ``sb`` and return its result
    (a traceback instead of a JSON result fails the test)."""
    payload = dict(args, _ansible_check_mode=check, _ansible_diff=False)
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
    try:
        proc = sb.run(
            [VENV_PYTHON, "-m", f"ansible_collections.tenantnet.nsproxy.plugins.modules.{module}",
             path],
            check=False,
            env=dict(os.environ, PYTHONPATH=COLLECTIONS),
        )  # fmt: skip
    finally:
        os.unlink(path)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"{module} gave no JSON result (a traceback?):\n{proc.stdout}\n{proc.stderr}")


def ok(sb, module, args, check=False):
    result = run_module(sb, module, args, check)
    assert not result.get("failed"), result["msg"]
    return result


def refused(sb, module, args, check=False):
    result = run_module(sb, module, args, check)
    assert result.get("failed"), result
    return result["msg"]


def links(sb, netns=None):
    return {link["ifname"]: link for link in sb.ip_json("-details", "link", netns=netns)}


def addresses(sb, ifname):
    (link,) = sb.ip_json("addr", "show", "dev", ifname)
    return sorted(
        f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["scope"] == "global"
    )


def tenant(name, bridge="br-t", **extra):
    spec = {
        "name": name,
        "attachment": {"type": "bridge", "bridge": bridge},
        "addresses": ["10.0.0.250/24"],
        "routes": [{"dst": "default", "gateway": "10.0.0.1"}],
    }
    spec.update(extra)
    return spec


# -- interface names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "args", "field"),
    [
        ("veth", {"name": "vh%d", "peer": "eth1"}, "name"),
        ("veth", {"name": "vh1", "peer": "eth%d"}, "peer"),
        ("bridge", {"name": "br%d"}, "name"),
        ("bridge", {"name": "ab%c"}, "name"),
    ],
)
def test_a_percent_in_a_name_is_refused_and_leaves_nothing(sandbox, module, args, field):
    """The kernel would make 'vh0' (and its peer under the temporary name) from 'vh%d': links
    nobody tags or ever removes, one more pair on each run."""
    before = set(links(sandbox))
    assert refused(sandbox, module, args).startswith(f"{field}: ")
    assert set(links(sandbox)) == before


def test_a_15_character_non_ascii_name_is_refused_naming_the_field(sandbox):
    msg = refused(sandbox, "bridge", {"name": "\u00fc" * 15})
    assert msg.startswith("name: ") and "30 bytes" in msg
    assert set(links(sandbox)) == {"lo"}


# -- IPv6 addresses and their prefix lengths --------------------------------------------------


def test_an_ipv6_address_listed_with_two_prefixes_is_refused_before_anything(sandbox):
    msg = refused(
        sandbox, "bridge", {"name": "b6", "addresses": ["2001:db8::5/64", "2001:db8::5/80"]}
    )
    assert msg.startswith("addresses[1]: '2001:db8::5/80'")
    assert "b6" not in links(sandbox)


def test_an_ipv6_prefix_change_without_purge_replaces_the_address(sandbox):
    """The kernel answered EEXIST to the /72 and the call reported a change on every run
    while the link kept the /64."""
    ok(sandbox, "bridge", {"name": "b7", "addresses": ["10.0.0.1/24", "2001:db8:1::5/64"]})
    args = {"name": "b7", "addresses": ["2001:db8:1::5/72"]}
    check = ok(sandbox, "bridge", args, check=True)
    first = ok(sandbox, "bridge", args)
    assert check["actions"] == first["actions"]
    assert [(a["op"], a["address"]) for a in first["actions"]] == [
        ("addr_del", "2001:db8:1::5/64"),
        ("addr_add", "2001:db8:1::5/72"),
    ]
    assert addresses(sandbox, "b7") == ["10.0.0.1/24", "2001:db8:1::5/72"]
    assert ok(sandbox, "bridge", args)["changed"] is False


def test_an_ipv6_address_the_kernel_holds_under_another_prefix_is_never_a_silent_noop(sandbox):
    """netlink.add_address, run inside the sandbox: the same address and prefix is there
    already (nothing to do), another prefix of an IPv6 address the link holds (added behind a
    plan's back) is EEXIST, which fails with a sentence instead of passing as done."""
    sandbox.sh("ip link add b8 type bridge && ip addr add 2001:db8:2::5/64 dev b8")
    script = (
        f"import sys; sys.path.insert(0, {COLLECTIONS!r})\n"
        "from ansible_collections.tenantnet.nsproxy.plugins.module_utils import netlink\n"
        "from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import "
        "ModuleFailure\n"
        "ns = netlink.open_netns(None)\n"
        "index = netlink.find_link(ns, 'b8')['index']\n"
        "print(netlink.add_address(ns, index, 'b8', '2001:db8:2::5/64'))\n"
        "try:\n"
        "    netlink.add_address(ns, index, 'b8', '2001:db8:2::5/72')\n"
        "except ModuleFailure as exc:\n"
        "    print(exc.msg)\n"
    )
    out = sandbox.run([VENV_PYTHON, "-c", script]).stdout.splitlines()
    assert out[0] == "False"  # the same address and prefix: already there, nothing to do
    assert "already holds 2001:db8:2::5 as 2001:db8:2::5/64" in out[1], out
    assert addresses(sandbox, "b8") == ["2001:db8:2::5/64"]


# -- veth state=absent when the peer's namespace went first -----------------------------------


def test_veth_absent_after_its_peer_namespace_was_deleted_succeeds(sandbox):
    sandbox.sh("ip netns add t1")
    ok(sandbox, "veth", {"name": "vh1", "peer": "eth0", "peer_netns": "t1"})
    sandbox.sh("ip netns del t1")  # the tenant torn down first: the pair goes with it
    # The kernel tears a namespace down in a work queue (net/core/net_namespace.c, cleanup_net):
    # `ip netns del` returns before the pair is gone, so wait for it (CI once ran the module
    # while the host end was still there, and it rightly deleted it: changed=True).
    wait_until(lambda: "vh1" not in links(sandbox), "the kernel to remove vh1 with t1", 10)
    args = {"name": "vh1", "peer": "eth0", "peer_netns": "t1", "state": "absent"}
    assert ok(sandbox, "veth", args, check=True)["changed"] is False
    result = ok(sandbox, "veth", args)
    assert result["changed"] is False and result["interface"] is None


def test_veth_absent_deletes_the_host_end_when_only_the_peer_namespace_name_is_gone(sandbox):
    sandbox.sh("ip netns add t2")
    ok(sandbox, "veth", {"name": "vh2", "peer": "eth0", "peer_netns": "t2"})
    # The name goes, a process keeps the namespace (and the pair) alive.
    sandbox.popen(["ip", "netns", "exec", "t2", "sleep", "60"])
    sandbox.sh("sleep 0.3; ip netns del t2")
    assert "vh2" in links(sandbox)
    result = ok(sandbox, "veth", {"name": "vh2", "peer": "eth0", "peer_netns": "t2",
                                  "state": "absent"})  # fmt: skip
    assert result["changed"] is True
    assert "vh2" not in links(sandbox)


# -- tenant_network ----------------------------------------------------------------------------


def test_tenant_with_a_link_local_address_is_refused_before_anything(sandbox):
    args = {"tenants": [tenant("ll", addresses=["10.0.0.250/24", "fe80::5/64"])]}
    for check in (True, False):
        msg = refused(sandbox, "tenant_network", args, check=check)
        assert msg.startswith("tenants[0] (ll).addresses[1]: 'fe80::5/64' is an IPv6 link-local")
    assert set(links(sandbox)) == {"lo"}
    assert not os.path.exists(f"/proc/{sandbox.pid}/root/run/netns/ll")


def test_host_interface_named_like_another_tenants_bridge_is_refused_before_anything(sandbox):
    """Let through, the run made tenant aa (bridge br-x) and failed for bb (EEXIST); the next
    run deleted aa's bridge to make bb's veth 'br-x', and aa was cut off."""
    args = {
        "tenants": [
            tenant("aa", bridge="br-x"),
            tenant("bb", attachment={"type": "bridge", "bridge": "br-y", "host_interface": "br-x"}),
        ]
    }
    for check in (True, False, False):
        msg = refused(sandbox, "tenant_network", args, check=check)
        assert msg.startswith("tenants[1] (bb).attachment.host_interface: 'br-x' is tenants[0]")
    assert set(links(sandbox)) == {"lo"}


def test_a_bridge_is_never_deleted_to_make_a_tenants_host_end(sandbox):
    """A bridge made for tenant aa by an earlier call; a later call (without aa) asks for a
    host end of that name. The veth planner's recreate path would delete the bridge."""
    ok(sandbox, "tenant_network", {"tenants": [tenant("aa", bridge="br-x")]})
    bb = tenant("bb", attachment={"type": "bridge", "bridge": "br-y", "host_interface": "br-x"})
    for check in (True, False):
        msg = refused(sandbox, "tenant_network", {"tenants": [bb]}, check=check)
        assert msg.startswith("tenants[0] (bb).attachment.host_interface: 'br-x' exists on the")
    now = links(sandbox)
    assert now["br-x"]["linkinfo"]["info_kind"] == "bridge"
    assert now["tn-aa"]["master"] == "br-x"
    absent = dict(bb, state="absent")
    ok(sandbox, "tenant_network", {"tenants": [absent]})  # removing bb never takes br-x either
    assert links(sandbox)["tn-aa"]["master"] == "br-x"


# -- routes: a failure half-way puts back what was replaced ------------------------------------


def test_a_route_list_that_fails_half_way_leaves_no_route_changed(sandbox):
    sandbox.sh(
        "ip link add d0 type veth peer name d0p && ip link set d0 up && ip link set d0p up && "
        "ip addr add 10.9.0.1/24 dev d0 && ip link add d1 type veth peer name d1p && "
        "ip addr add 10.8.0.1/24 dev d1"
    )  # d1 stays down: its subnet has an address (validation passes) but no route
    ok(sandbox, "netns_route", {"routes": [{"dst": "10.60.0.0/16", "gateway": "10.9.0.2"}]})
    routes = [
        {"dst": "10.60.0.0/16", "gateway": "10.9.0.3"},
        {"dst": "10.70.0.0/16", "gateway": "10.8.0.2"},
    ]
    msg = refused(sandbox, "netns_route", {"routes": routes})
    assert "10.70.0.0/16" in msg
    assert sandbox.sh("ip route show 10.60.0.0/16").stdout.split()[:3] == [
        "10.60.0.0/16",
        "via",
        "10.9.0.2",
    ]
    assert sandbox.sh("ip route show 10.70.0.0/16").stdout == ""
