"""Pure logic of macvlan_vlan: input normalisation, immutables, planning."""

from __future__ import annotations

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.modules import macvlan_vlan as M


def params(**kw):
    base = {
        "parent": "eth0",
        "netns": None,
        "vlan_id": None,
        "vlan_name": None,
        "vlan_protocol": "802.1Q",
        "vlan_mtu": None,
        "macvlans": [],
        "host_shim": None,
        "state": "present",
        "recreate": False,
    }
    base.update(kw)
    return base


def mv(name, netns="t1", **kw):
    spec = {
        "name": name,
        "netns": netns,
        "mode": "bridge",
        "mac": None,
        "mtu": None,
        "addresses": None,
        "purge_addresses": False,
        "link_state": "up",
    }
    spec.update(kw)
    return spec


def link(
    name,
    kind,
    lower=None,
    mode=None,
    vlan_id=None,
    mtu=1500,
    state="up",
    owned=True,
    addresses=(),
    protocol=0x8100,
):
    data = {}
    if mode:
        data["mode"] = mode
    if vlan_id:
        data.update(id=vlan_id, protocol=protocol)
    return {
        "name": name,
        "kind": kind,
        "lower": lower,
        "kind_data": data,
        "mtu": mtu,
        "mac": "02:00:00:00:00:01",
        "state": state,
        "owned": owned,
        "addresses": list(addresses),
        "master": None,
    }


PARENT = link("eth0", None)


# -- names and input ----------------------------------------------------------------------------
def test_default_vlan_name_fits_in_fifteen_characters():
    assert M.default_vlan_name("eth0", 50) == "eth0.50"
    assert M.default_vlan_name("enp0s31f6abcdef", 4094) == "enp0s31f6a.4094"
    assert len(M.default_vlan_name("x" * 15, 1)) == 15


def test_macvlans_default_to_bridge_mode_and_the_parents_namespace():
    want = M.normalize_params(params(netns="host1", macvlans=[mv("m1", netns=None, mode=None)]))
    assert want["macvlans"][0]["mode"] == "bridge"
    assert want["macvlans"][0]["netns"] == "host1"
    assert want["lower"] == "eth0"


def test_vlan_makes_the_subinterface_the_lower_device():
    want = M.normalize_params(params(vlan_id=50, macvlans=[mv("m1")]))
    assert want["vlan"] == {"name": "eth0.50", "id": 50, "protocol": "802.1Q", "mtu": None}
    assert want["lower"] == "eth0.50"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"vlan_id": 0}, "vlan_id"),
        ({"vlan_id": 4095}, "vlan_id"),
        ({"vlan_id": 10, "vlan_name": "much-too-long-name"}, "vlan_name"),
        ({"vlan_name": "eth0.7"}, "vlan_name"),
        ({"vlan_mtu": 1400}, "vlan_mtu"),
        ({"parent": "bad/name"}, "parent"),
        ({"macvlans": [mv("m1", mac="01:00:5e:00:00:01")]}, "macvlans[0].mac"),
        ({"macvlans": [mv("m1"), mv("m1")]}, "macvlans[1].name"),
        ({"macvlans": [mv("m1", addresses=["10.0.0.1"])]}, "macvlans[0].addresses[0]"),
        ({"macvlans": [mv("m1", mtu=20)]}, "macvlans[0].mtu"),
        ({"macvlans": [mv("eth0", netns=None)]}, "macvlans[0].name"),
        ({"host_shim": {"name": "eth0", "address": "10.0.0.1/32"}}, "host_shim.name"),
        ({"host_shim": {"name": "s0", "address": "10.0.0.1"}}, "host_shim.address"),
        (
            {"host_shim": {"name": "s0", "address": "10.0.0.1/32", "routes": ["10.0.0.5/8"]}},
            "host_shim.routes[0].dst",
        ),
        # The kernel owns IPv6 link-local addresses and they are never read back (one shared
        # validator with veth, bridge and tenant_network).
        (
            {"macvlans": [mv("m1", addresses=["10.0.0.2/24", "fe80::5/64"])]},
            "macvlans[0].addresses[1]",
        ),  # fmt: skip
        ({"host_shim": {"name": "s0", "address": "fe80::9/64"}}, "host_shim.address"),
        (
            {"macvlans": [mv("m1", addresses=["2001:db8::5/64", "2001:db8::5/80"])]},
            "macvlans[0].addresses[1]",
        ),  # fmt: skip
        ({"macvlans": [mv("m%d")]}, "macvlans[0].name"),
        ({"host_shim": {"name": "s%d", "address": "10.0.0.1/32"}}, "host_shim.name"),
    ],
)
def test_bad_input_names_the_field(kw, field):
    with pytest.raises(ParamError) as err:
        M.normalize_params(params(**kw))
    assert err.value.field == field
    assert err.value.msg.startswith(field)


def test_same_macvlan_name_in_two_namespaces_is_fine():
    want = M.normalize_params(params(macvlans=[mv("eth1", "t1"), mv("eth1", "t2")]))
    assert [m["netns"] for m in want["macvlans"]] == ["t1", "t2"]


# -- environment checks ---------------------------------------------------------------------------
def test_missing_parent_fails_before_anything():
    want = M.normalize_params(params(macvlans=[mv("m1")]))
    with pytest.raises(ParamError, match="^parent: interface 'eth0' does not exist"):
        M.check_environment(want, {"parent": None})


def test_child_mtu_cannot_exceed_the_lower_device():
    want = M.normalize_params(params(vlan_id=5, vlan_mtu=1400, macvlans=[mv("m1", mtu=1450)]))
    with pytest.raises(ParamError) as err:
        M.check_environment(want, {"parent": PARENT, "vlan": None})
    assert err.value.field == "macvlans[0].mtu"
    want = M.normalize_params(params(vlan_id=5, vlan_mtu=9000))
    with pytest.raises(ParamError, match="^vlan_mtu: 9000 exceeds the MTU 1500"):
        M.check_environment(want, {"parent": PARENT, "vlan": None})


# -- planning ------------------------------------------------------------------------------------
def test_fresh_setup_plans_vlan_then_macvlans_then_shim():
    want = M.normalize_params(
        params(
            vlan_id=50,
            macvlans=[mv("m1", addresses=["192.0.2.10/24"])],
            host_shim={"name": "shim", "address": "192.0.2.254/32", "routes": ["192.0.2.10"]},
        )
    )
    actions, tracker = M.plan(
        want, {"parent": PARENT, "vlan": None, "macvlans": [None], "shim": None}
    )
    assert actions.ops() == [
        "vlan_create",
        "link_set",
        "macvlan_create",
        "addr_add",
        "link_set",
        "macvlan_create",
        "addr_add",
        "link_set",
        "route_replace",
    ]
    create = actions.actions[2]
    assert (create["lower"], create["mode"], create["netns"]) == ("eth0.50", "bridge", "t1")
    assert actions.actions[-1]["route"]["dst"] == "192.0.2.10/32"
    assert tracker.after["vlan eth0.50.id"] == 50 and tracker.before["vlan eth0.50.id"] is None


def test_matching_kernel_state_plans_nothing():
    want = M.normalize_params(
        params(
            vlan_id=50,
            macvlans=[mv("m1", addresses=["192.0.2.10/24"])],
            host_shim={"name": "shim", "address": "192.0.2.254/32", "routes": ["192.0.2.10"]},
        )
    )
    shim_route = {
        "dst": "192.0.2.10/32",
        "family": "inet",
        "gateway": None,
        "dev": "shim",
        "metric": 0,
        "table": 254,
        "scope": "link",
        "src": None,
        "proto": "static",
        "onlink": False,
    }
    have = {
        "parent": PARENT,
        "vlan": link("eth0.50", "vlan", lower="eth0", vlan_id=50),
        "macvlans": [link("m1", "macvlan", "eth0.50", "bridge", addresses=["192.0.2.10/24"])],
        "shim": link("shim", "macvlan", "eth0.50", "bridge", addresses=["192.0.2.254/32"]),
        "shim_routes": [shim_route],
    }
    actions, tracker = M.plan(want, have)
    assert actions.ops() == []
    assert not tracker.changed


def test_mode_changes_in_place_but_passthru_needs_recreate():
    want = M.normalize_params(params(macvlans=[mv("m1", mode="private")]))
    have = {"parent": PARENT, "macvlans": [link("m1", "macvlan", "eth0", "bridge")]}
    actions, _tracker = M.plan(want, have)
    assert actions.ops() == ["macvlan_mode"]
    want = M.normalize_params(params(macvlans=[mv("m1", mode="passthru")]))
    with pytest.raises(ModuleFailure, match="passthru cannot be switched"):
        M.plan(want, have)


def test_other_vlan_id_fails_naming_the_difference_or_recreates_with_its_macvlans():
    have = {
        "parent": PARENT,
        "vlan": link("eth0.50", "vlan", lower="eth0", vlan_id=50),
        "macvlans": [link("m1", "macvlan", "eth0.50", "bridge")],
    }
    want = M.normalize_params(params(vlan_id=51, vlan_name="eth0.50", macvlans=[mv("m1")]))
    with pytest.raises(ModuleFailure) as err:
        M.plan(want, have)
    assert "VLAN id 50 instead of 51" in err.value.msg and "recreate: true" in err.value.msg
    want = M.normalize_params(
        params(vlan_id=51, vlan_name="eth0.50", recreate=True, macvlans=[mv("m1")])
    )
    actions, tracker = M.plan(want, have)
    assert actions.ops()[:3] == ["link_del", "vlan_create", "link_set"]
    assert "macvlan_create" in actions.ops()
    assert tracker.before["vlan eth0.50.id"] == 50


def test_other_vlan_parent_or_protocol_is_an_immutable_difference():
    have = {
        "parent": PARENT,
        "vlan": link("eth0.50", "vlan", lower="eth9", vlan_id=50, protocol=0x88A8),
    }
    want = M.normalize_params(params(vlan_id=50))
    with pytest.raises(ModuleFailure) as err:
        M.plan(want, have)
    assert "parent eth9 instead of eth0" in err.value.msg
    assert "protocol 802.1ad instead of 802.1Q" in err.value.msg


def test_existing_interface_of_another_kind_conflicts():
    want = M.normalize_params(params(macvlans=[mv("m1")]))
    with pytest.raises(ModuleFailure, match=r"^macvlans\[0\]: .* kind veth instead of macvlan"):
        M.plan(want, {"parent": PARENT, "macvlans": [link("m1", "veth")]})


def test_macvlan_on_another_parent_is_recreated_only_when_asked():
    have = {
        "parent": PARENT,
        "macvlans": [link("m1", "macvlan", "link #4 of another namespace", "bridge")],
    }
    with pytest.raises(ModuleFailure, match="parent link #4 of another namespace instead of eth0"):
        M.plan(M.normalize_params(params(macvlans=[mv("m1")])), have)
    actions, _tracker = M.plan(M.normalize_params(params(recreate=True, macvlans=[mv("m1")])), have)
    assert actions.ops() == ["link_del", "macvlan_create", "link_set"]


def test_shim_routes_are_exact():
    want = M.normalize_params(
        params(host_shim={"name": "shim", "address": "192.0.2.254/32", "routes": ["192.0.2.11"]})
    )
    old = {
        "dst": "192.0.2.10/32",
        "family": "inet",
        "gateway": None,
        "dev": "shim",
        "metric": 0,
        "table": 254,
        "scope": "link",
        "src": None,
        "proto": "static",
        "onlink": False,
    }
    have = {
        "parent": PARENT,
        "shim": link("shim", "macvlan", "eth0", "bridge", addresses=["192.0.2.254/32"]),
        "shim_routes": [old],
    }
    actions, _tracker = M.plan(want, have)
    assert [(a["op"], a["route"]["dst"]) for a in actions] == [
        ("route_replace", "192.0.2.11/32"),
        ("route_delete", "192.0.2.10/32"),
    ]


def test_absent_deletes_macvlans_shim_and_only_our_vlan():
    want = M.normalize_params(
        params(
            vlan_id=50,
            state="absent",
            macvlans=[mv("m1")],
            host_shim={"name": "shim", "address": "192.0.2.254/32"},
        )
    )
    have = {
        "parent": PARENT,
        "vlan": link("eth0.50", "vlan", "eth0", vlan_id=50),
        "macvlans": [link("m1", "macvlan", "eth0.50", "bridge")],
        "shim": link("shim", "macvlan", "eth0.50", "bridge"),
    }
    actions, _tracker = M.plan(want, have)
    assert [(a["op"], a["ifname"]) for a in actions] == [
        ("link_del", "m1"),
        ("link_del", "shim"),
        ("link_del", "eth0.50"),
    ]
    have["vlan"]["owned"] = False
    actions, _tracker = M.plan(want, have)
    assert [a["ifname"] for a in actions] == ["m1", "shim"]
    assert M.unowned_vlan_left(want, have) == "eth0.50"
    gone = {"parent": PARENT, "vlan": None, "macvlans": [None], "shim": None}
    assert M.plan(want, gone)[0].ops() == []


def test_vlan_on_a_parent_that_is_down_is_refused_before_anything():
    want = M.normalize_params(params(vlan_id=5))
    with pytest.raises(ParamError, match="^parent: 'eth0' is down"):
        M.check_environment(want, {"parent": link("eth0", None, state="down"), "vlan": None})
    M.check_environment(
        M.normalize_params(params(macvlans=[mv("m1")])),
        {"parent": link("eth0", None, state="down")},
    )
