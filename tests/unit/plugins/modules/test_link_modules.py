"""Planning logic of the veth, bridge and netns modules: want + have -> exact plan and diff,
without a kernel (the have side is given as the normalised dicts module_utils produces)."""

from __future__ import annotations

import errno

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.executor import bridge_attrs
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import plan_link_changes
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetlinkError,
    Netns,
    create_link,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import Rollback
from ansible_collections.tenantnet.nsproxy.plugins.modules import bridge, netns, veth

LABELS = ("the host namespace", "netns 'vt'")


def veth_params(**overrides):
    params = {key: spec.get("default") for key, spec in veth.ARGUMENT_SPEC.items()}
    params.update(name="vh0", peer="eth1", peer_netns="vt")
    params.update(overrides)
    return params


def bridge_params(**overrides):
    params = {key: spec.get("default") for key, spec in bridge.ARGUMENT_SPEC.items()}
    params.update(name="br0", netns="bt")
    params.update(overrides)
    return params


def link(name, kind="veth", **extra):
    base = dict(
        name=name,
        ifindex=5,
        kind=kind,
        mtu=1500,
        mac="02:00:00:00:00:05",
        operstate="UP",
        state="up",
        addresses=[],
        master=None,
        alias="tenantnet.nsproxy",
        owned=True,
        netns=None,
        link_index=None,
        link_netnsid=None,
        kind_data={},
    )
    base.update(extra)
    return base


# ---------------------------------------------------------------------------- shared link plan


def test_link_plan_for_a_new_link_sets_everything_wanted_in_order():
    plan, tracker = Plan(), DiffTracker()
    want = dict(
        mtu=1400, mac="02:00:00:00:00:01", master="br0", state="up", addresses=["10.0.0.2/24"]
    )
    plan_link_changes(plan, tracker, "v0", None, want, None)
    assert plan.ops() == ["link_set", "addr_add", "link_set"]
    assert plan.actions[0] == {
        "op": "link_set",
        "ifname": "v0",
        "netns": None,
        "mtu": 1400,
        "mac": "02:00:00:00:00:01",
        "master": "br0",
    }
    assert plan.actions[-1]["state"] == "up"


def test_link_plan_is_empty_when_everything_matches():
    plan, tracker = Plan(), DiffTracker()
    have = link("v0", addresses=["10.0.0.2/24"], master="br0")
    want = dict(
        mtu=1500, mac="02:00:00:00:00:05", master="br0", state="up", addresses=["10.0.0.2/24"]
    )
    plan_link_changes(plan, tracker, "v0", None, want, have, purge_addresses=True)
    assert not plan
    assert not tracker.changed


def test_link_plan_master_empty_string_detaches():
    plan, tracker = Plan(), DiffTracker()
    plan_link_changes(plan, tracker, "v0", None, dict(master=""), link("v0", master="br0"))
    assert plan.actions == [{"op": "link_set", "ifname": "v0", "netns": None, "master": ""}]
    assert tracker.before == {"master": "br0"} and tracker.after == {"master": ""}


def test_link_plan_removes_before_adding_and_diff_shows_result():
    plan, tracker = Plan(), DiffTracker()
    have = link("v0", addresses=["10.0.0.2/24", "10.9.0.1/24"])
    plan_link_changes(
        plan, tracker, "v0", "vt", dict(addresses=["10.0.0.3/24"]), have, True, "peer."
    )
    assert plan.ops() == ["addr_del", "addr_del", "addr_add"]
    assert tracker.after["peer.addresses"] == ["10.0.0.3/24"]
    assert tracker.before["peer.addresses"] == ["10.0.0.2/24", "10.9.0.1/24"]


# ---------------------------------------------------------------------------- veth


def test_veth_bad_inputs_fail_naming_the_field():
    with pytest.raises(ParamError, match="^peer: required"):
        veth.build_want(veth_params(peer=None))
    with pytest.raises(ParamError, match="^mtu: "):
        veth.build_want(veth_params(mtu=10))
    with pytest.raises(ParamError, match=r"^peer_addresses\[0\]: "):
        veth.build_want(veth_params(peer_addresses=["10.0.0.1"]))
    with pytest.raises(ParamError, match="^peer_netns: "):
        veth.build_want(veth_params(peer_netns="a/b"))
    with pytest.raises(ParamError, match="^peer: must differ"):
        veth.build_want(veth_params(peer="vh0", peer_netns=None))


@pytest.mark.parametrize("field", ["name", "peer", "master"])
@pytest.mark.parametrize("value", ["vh%d", "ab%c", "%"])
def test_a_percent_in_an_interface_name_is_refused_naming_the_field(field, value):
    """The kernel reads '%d' as a name template: the link would get another name (vh0) that
    the call never finds, tags or removes."""
    with pytest.raises(ParamError, match=f"^{field}: interface name '{value}' is not allowed"):
        veth.build_want(veth_params(**{field: value}))


def test_interface_names_are_measured_in_bytes_like_the_kernel_does():
    assert veth.build_want(veth_params(name="a" * 15))["name"] == "a" * 15
    with pytest.raises(ParamError, match="^name: .* has 30 bytes in UTF-8; .* at most 15 bytes"):
        bridge.build_want(bridge_params(name="\u00fc" * 15))
    with pytest.raises(ParamError, match="^peer: .* has 16 bytes"):
        veth.build_want(veth_params(peer="\u00fc" * 7 + "ab"))


def test_an_ipv6_address_listed_with_two_prefixes_is_refused_naming_the_second():
    with pytest.raises(ParamError, match=r"^addresses\[1\]: '2001:db8::5/80' is the address of "):
        bridge.build_want(bridge_params(addresses=["2001:db8::5/64", "2001:db8::5/80"]))
    with pytest.raises(ParamError, match=r"^peer_addresses\[2\]: "):
        veth.build_want(
            veth_params(peer_addresses=["2001:db8::5/64", "10.0.0.5/24", "2001:DB8::5/127"])
        )
    # The same IPv4 address under two prefixes is two kernel addresses; a duplicate is dropped.
    want = bridge.build_want(
        bridge_params(
            addresses=["10.0.0.5/24", "10.0.0.5/16", "2001:db8::5/64", "2001:db8:0::5/64"]
        )
    )
    assert want["link"]["addresses"] == ["10.0.0.5/24", "10.0.0.5/16", "2001:db8::5/64"]


def test_an_ipv6_address_held_under_another_prefix_is_replaced_without_purge():
    """The kernel keys an IPv6 address by the address alone: adding /72 next to /64 is EEXIST,
    so the plan removes the /64 first, in check mode too."""
    plan, tracker = Plan(), DiffTracker()
    have = link("v0", addresses=["10.0.0.2/24", "2001:db8:1::5/64", "2001:db8:2::1/64"])
    want = dict(addresses=["2001:db8:1::5/72"])
    plan_link_changes(plan, tracker, "v0", None, want, have, purge_addresses=False)
    assert [(a["op"], a["address"]) for a in plan.actions] == [
        ("addr_del", "2001:db8:1::5/64"),
        ("addr_add", "2001:db8:1::5/72"),
    ]
    assert tracker.after["addresses"] == ["10.0.0.2/24", "2001:db8:1::5/72", "2001:db8:2::1/64"]


class OverloadedKernel:
    """The link calls of pyroute2's IPRoute over a table of links; the first lookup by name
    fails with ENOBUFS, as a busy host's netlink socket can."""

    def __init__(self):
        self.links = {}
        self.lookups = 0

    def link(self, command, index=None, **attrs):
        if command == "add":
            self.links[max(self.links, default=1) + 1] = attrs["ifname"]
            return []
        if command == "get":
            return [{"index": index}]
        if command == "del":
            del self.links[index]
            return []
        raise AssertionError(command)

    def link_lookup(self, ifname):
        self.lookups += 1
        if self.lookups == 1:
            raise NetlinkError(errno.ENOBUFS, "no buffer space")
        return [i for i, name in self.links.items() if name == ifname]


def test_create_link_registers_its_undo_before_it_looks_the_new_link_up():
    """The kernel made the link, then looking it up by name failed: the rollback still removes
    it, so nothing is left, untagged, on the host."""
    ns = Netns(None, None, "netns")
    ns.ipr = OverloadedKernel()
    rollback = Rollback()
    with pytest.raises(ModuleFailure, match="ENOBUFS"):
        create_link(ns, rollback, "br7", "bridge")
    assert ns.ipr.links == {2: "br7"}
    assert rollback.unwind() == []
    assert ns.ipr.links == {}


def test_veth_absent_link_is_created_with_peer_in_its_namespace():
    want = veth.build_want(veth_params(peer_addresses=["10.0.0.2/24"]))
    plan, tracker = veth.build_plan(want, dict(end=None, peer_end=None, paired=False), LABELS)
    assert plan.actions[0] == {
        "op": "veth_add",
        "ifname": "vh0",
        "netns": None,
        "peer": "eth1",
        "peer_netns": "vt",
    }
    assert {
        "op": "addr_add",
        "ifname": "eth1",
        "netns": "vt",
        "address": "10.0.0.2/24",
    } in plan.actions
    assert tracker.before["present"] is False and tracker.after["present"] is True


def test_veth_existing_pair_with_same_input_plans_nothing():
    want = veth.build_want(veth_params(mtu=1500))
    have = dict(end=link("vh0"), peer_end=link("eth1", netns="vt"), paired=True)
    plan, tracker = veth.build_plan(want, have, LABELS)
    assert plan.actions == []
    assert not tracker.changed


def test_veth_existing_name_of_other_kind_fails_without_recreate():
    want = veth.build_want(veth_params())
    have = dict(end=link("vh0", kind="bridge"), peer_end=None, paired=False)
    with pytest.raises(ModuleFailure, match="as a bridge, not a veth.*recreate: true"):
        veth.build_plan(want, have, LABELS)


def test_veth_recreate_deletes_first_then_creates():
    want = veth.build_want(veth_params(recreate=True))
    have = dict(end=link("vh0", kind="bridge"), peer_end=None, paired=False)
    plan = veth.build_plan(want, have, LABELS)[0]
    assert plan.ops()[:2] == ["link_del", "veth_add"]


def test_veth_other_peer_is_an_immutable_difference():
    want = veth.build_want(veth_params(peer="eth9"))
    have = dict(end=link("vh0", link_index=9, link_netnsid=0), peer_end=None, paired=False)
    with pytest.raises(ModuleFailure, match="^peer: .*cannot be changed in place"):
        veth.build_plan(want, have, LABELS)


def test_veth_peer_name_taken_by_something_else_fails():
    want = veth.build_want(veth_params())
    have = dict(end=None, peer_end=link("eth1", kind="bridge"), paired=False)
    with pytest.raises(ModuleFailure, match="^peer: 'eth1' already exists"):
        veth.build_plan(want, have, LABELS)


def test_veth_absent_plans_one_delete_and_never_deletes_other_kinds():
    want = veth.build_want(veth_params(state="absent", peer=None))
    plan, tracker = veth.build_plan(
        want, dict(end=link("vh0"), peer_end=None, paired=False), LABELS
    )
    assert plan.ops() == ["link_del"]
    assert tracker.after == {"present": False}
    with pytest.raises(ModuleFailure, match="not deleting it"):
        veth.build_plan(
            want, dict(end=link("vh0", kind="bridge"), peer_end=None, paired=False), LABELS
        )
    plan = veth.build_plan(want, dict(end=None, peer_end=None, paired=False), LABELS)[0]
    assert not plan


# ---------------------------------------------------------------------------- bridge


def bridge_have(**extra):
    view = bridge.bridge_view(
        link(
            "br0", kind="bridge", kind_data=dict(stp_state=0, vlan_filtering=0, vlan_default_pvid=1)
        ),
        extra.pop("ports", []),
    )
    view.update(extra)
    return view


def test_bridge_view_normalises_kernel_values():
    view = bridge_have(ports=["p1"])
    assert view["stp"] is False and view["vlan_filtering"] is False and view["default_pvid"] == 1
    assert view["ports"] == ["p1"]
    assert "kind_data" not in view


def test_bridge_defaults_match_the_kernel_so_an_existing_plain_bridge_is_unchanged():
    want = bridge.build_want(bridge_params())
    plan = bridge.build_plan(want, bridge_have(), "netns 'bt'")[0]
    assert plan.actions == []


def test_bridge_new_bridge_is_created_with_stp_off_only_unset_options_left_out():
    want = bridge.build_want(bridge_params(ports=["p1"]))
    plan = bridge.build_plan(want, None, "netns 'bt'")[0]
    assert plan.actions[0] == {"op": "bridge_add", "ifname": "br0", "netns": "bt", "stp": False}
    assert {"op": "link_set", "ifname": "p1", "netns": "bt", "master": "br0"} in plan.actions


def test_bridge_option_change_and_exact_port_set():
    want = bridge.build_want(
        bridge_params(stp=True, default_pvid=10, ports=["p1", "p3"], purge_ports=True)
    )
    plan, tracker = bridge.build_plan(want, bridge_have(ports=["p1", "p2"]), "netns 'bt'")
    assert plan.actions[0] == {
        "op": "bridge_set",
        "ifname": "br0",
        "netns": "bt",
        "stp": True,
        "default_pvid": 10,
    }
    assert {"op": "link_set", "ifname": "p3", "netns": "bt", "master": "br0"} in plan.actions
    assert {"op": "link_set", "ifname": "p2", "netns": "bt", "master": ""} in plan.actions
    assert tracker.before["ports"] == ["p1", "p2"] and tracker.after["ports"] == ["p1", "p3"]


def test_bridge_ports_without_purge_only_add():
    want = bridge.build_want(bridge_params(ports=["p3"]))
    plan, tracker = bridge.build_plan(want, bridge_have(ports=["p1"]), "netns 'bt'")
    assert plan.actions == [{"op": "link_set", "ifname": "p3", "netns": "bt", "master": "br0"}]
    assert tracker.after["ports"] == ["p1", "p3"]


def test_bridge_conflict_and_bad_input():
    with pytest.raises(ParamError, match="^default_pvid: 5000 is out of range; allowed: 0-4094"):
        bridge.build_want(bridge_params(default_pvid=5000))
    with pytest.raises(ParamError, match=r"^ports\[0\]: a bridge cannot be a port of itself"):
        bridge.build_want(bridge_params(ports=["br0"]))
    veth_named_br0 = bridge.bridge_view(link("br0", kind="veth"), [])
    with pytest.raises(ModuleFailure, match="as a veth, not a bridge"):
        bridge.build_plan(bridge.build_want(bridge_params()), veth_named_br0, "netns 'bt'")
    want = bridge.build_want(bridge_params(recreate=True))
    plan = bridge.build_plan(want, veth_named_br0, "x")[0]
    assert plan.ops()[:2] == ["link_del", "bridge_add"]


def test_bridge_attrs_map_to_pyroute2_keywords():
    assert bridge_attrs({"stp": False, "vlan_filtering": True, "default_pvid": 10}) == {
        "br_stp_state": 0,
        "br_vlan_filtering": 1,
        "br_vlan_default_pvid": 10,
    }


# ---------------------------------------------------------------------------- netns


def netns_params(**overrides):
    params = {key: spec.get("default") for key, spec in netns.ARGUMENT_SPEC.items()}
    params.update(name="n1")
    params.update(overrides)
    return params


ABSENT = dict(exists=False, live=False, inode=None, loopback=None)
LIVE = dict(exists=True, live=True, inode=111, loopback="up")


def test_netns_new_name_is_created_and_lo_brought_up():
    plan, tracker = netns.build_plan(netns.build_want(netns_params()), ABSENT, None)
    assert plan.ops() == ["netns_create", "loopback_up"]
    assert tracker.before == {"exists": False, "loopback": None}
    assert tracker.after == {"exists": True, "loopback": "up"}


def test_netns_existing_name_is_unchanged():
    plan = netns.build_plan(netns.build_want(netns_params()), LIVE, None)[0]
    assert not plan


def test_netns_stale_file_is_replaced():
    stale = dict(exists=True, live=False, inode=None, loopback=None)
    plan = netns.build_plan(netns.build_want(netns_params()), stale, None)[0]
    assert plan.ops() == ["netns_remove", "netns_create", "loopback_up"]


def test_netns_name_pointing_at_an_old_namespace_is_reattached():
    target = dict(source="/proc/42/ns/net", inode=222, pid=42)
    want = netns.build_want(netns_params(pid=42, loopback_up=False))
    plan, tracker = netns.build_plan(want, LIVE, target)
    assert plan.ops() == ["netns_remove", "netns_attach"]
    assert plan.actions[1]["source"] == "/proc/42/ns/net"
    assert tracker.before["inode"] == 111 and tracker.after["inode"] == 222


def test_netns_same_inode_is_unchanged():
    target = dict(source="/proc/42/ns/net", inode=111, pid=42)
    plan = netns.build_plan(netns.build_want(netns_params(pid=42)), LIVE, target)[0]
    assert not plan


def test_netns_absent_removes_only_the_name():
    want = netns.build_want(netns_params(state="absent"))
    plan = netns.build_plan(want, LIVE, None)[0]
    assert plan.actions == [{"op": "netns_remove", "path": "/run/netns/n1"}]
    assert not netns.build_plan(want, ABSENT, None)[0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(name="a/b"), "name"),
        (dict(name="/run/netns/x"), "name"),
        (dict(pid=0), "pid"),
        (dict(path="relative/ns"), "path"),
        (dict(container="web1", docker_host="tcp://10.0.0.1:2375"), "docker_host"),
        (dict(netns_dir="run/netns"), "netns_dir"),
    ],
)
def test_netns_bad_input_names_the_field(overrides, field):
    with pytest.raises(ParamError) as err:
        netns.build_want(netns_params(**overrides))
    assert err.value.field == field
