"""tenant_network: validation of the whole tenant list before anything is touched (pure logic;
the kernel side is exercised through site.yml by tests/roles)."""

from __future__ import annotations

import pytest

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.modules.tenant_network import build_tenants


def tenant(name="acme", **over):
    raw = {
        "name": name,
        "state": "present",
        "attachment": {"type": "bridge", "bridge": "br-tenants", "mode": "bridge"},
        "interface": "eth0",
        "addresses": ["10.0.0.250/24"],
        "routes": [
            {"dst": "default", "gateway": "10.0.0.254"},
            {"dst": "10.0.0.0/8", "gateway": "10.0.0.1"},
        ],
    }
    raw.update(over)
    return raw


def vlan(**over):
    attachment = {"type": "vlan", "parent": "eth1", "vlan_id": 101, "mode": "bridge"}
    attachment.update(over)
    return attachment


def problem(*tenants) -> str:
    with pytest.raises(ModuleFailure) as info:
        build_tenants(list(tenants))
    return info.value.msg


def test_valid_tenants_are_normalised():
    acme, globex = build_tenants(
        [tenant(addresses=["10.0.0.250/24", "10.0.0.250/24"]), tenant("globex", attachment=vlan())]
    )
    assert acme.addresses == ["10.0.0.250/24"]  # duplicates dropped
    assert acme.host_interface == "tn-acme" and acme.bridge == "br-tenants"
    assert globex.subinterface == "eth1.101" and globex.mode == "bridge"
    assert [r["dst"] for r in acme.routes] == ["default", "10.0.0.0/8"]


def test_overlapping_addresses_across_tenants_are_allowed():
    assert len(build_tenants([tenant("a"), tenant("b"), tenant("c", attachment=vlan())])) == 3


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (tenant("Acme"), "tenants[0].name: 'Acme' is not allowed"),
        (tenant("much-too-long-name"), "use 1-12 characters"),
        (tenant(attachment=vlan(vlan_id=5000)), "attachment.vlan_id: 5000 is out of range"),
        (tenant(attachment=vlan(vlan_id=None)), "attachment.vlan_id: required for attachment"),
        (tenant(attachment=vlan(parent=None)), "attachment.parent: required for attachment"),
        (tenant(attachment={"type": "bridge"}), "attachment.bridge: required for attachment"),
        (tenant(attachment={"type": "container"}), "attachment.container: required"),
        (tenant(attachment=vlan(parent="enp0s31f6long")), "has 17 characters"),
        (tenant(addresses=["10.0.0.250"]), "addresses[0]: '10.0.0.250' is not an address in CIDR"),
        (tenant(interface="eth0:1"), "interface: interface name 'eth0:1' is not allowed"),
        (
            tenant(routes=[{"dst": "default", "gateway": "192.0.2.1"}]),
            "tenants[0] (acme).routes[0].gateway: 192.0.2.1 is outside every connected subnet",
        ),
        (tenant(routes=[{"dst": "default"}]), "routes[0]"),
        (tenant(attachment={**vlan(), "mac": "01:00:5e:00:00:01"}), "multicast MAC"),
        (
            tenant(addresses=["10.0.0.250/24", "fe80::5/64"]),
            "tenants[0] (acme).addresses[1]: 'fe80::5/64' is an IPv6 link-local address",
        ),
        (
            tenant(addresses=["2001:db8::5/64", "2001:db8::5/80"]),
            "tenants[0] (acme).addresses[1]: '2001:db8::5/80' is the address of",
        ),
        (tenant(interface="eth%d"), "tenants[0] (acme).interface: interface name 'eth%d'"),
        (tenant(attachment=vlan(parent="\u00fc" * 6)), "has 16 bytes in UTF-8"),
    ],
    ids=[
        "upper-case-name",
        "name-too-long",
        "vlan-5000",
        "vlan-missing",
        "parent-missing",
        "bridge-missing",
        "container-missing",
        "subinterface-name-too-long",
        "address-without-prefix",
        "bad-interface-name",
        "gateway-outside-subnet",
        "route-without-gateway-or-dev",
        "multicast-mac",
        "ipv6-link-local",
        "ipv6-two-prefixes",
        "percent-template",
        "subinterface-15-characters-16-bytes",
    ],
)
def test_bad_tenant_is_rejected_naming_the_field(bad, message):
    assert message in problem(tenant("ok"), bad).replace("tenants[1]", "tenants[0]")


def test_duplicate_names_and_host_links_are_rejected():
    assert "tenants[1] (acme).name: 'acme' is already used by tenants[0]" in problem(
        tenant(), tenant()
    )
    assert "host_interface: 'tn-shared' is already used by tenants[0]" in problem(
        tenant("a", attachment={"type": "bridge", "bridge": "b", "host_interface": "tn-shared"}),
        tenant("b", attachment={"type": "bridge", "bridge": "b", "host_interface": "tn-shared"}),
    )


def test_container_tenants_need_no_addresses():
    (web,) = build_tenants(
        [tenant("web", attachment={"type": "container", "container": "web1"}, addresses=[])]
    )
    assert web.kind == "container" and web.addresses == []


@pytest.mark.parametrize("name", ["acme\n", "acme\x00", "ac\tme"])
def test_tenant_names_are_matched_whole(name):
    assert "tenants[1].name: " in problem(tenant("ok"), tenant(name))


def bridge_at(bridge, **over):
    return dict({"type": "bridge", "bridge": bridge, "mode": "bridge"}, **over)


@pytest.mark.parametrize(
    ("aa", "host_interface", "what"),
    [
        (bridge_at("br-x"), "br-x", "tenants[0] (aa)'s bridge (attachment.bridge)"),
        (vlan(), "eth1.101", "tenants[0] (aa)'s VLAN subinterface"),
        (vlan(), "tnvlan101", "tenants[0] (aa)'s VLAN fallback bridge"),
        (vlan(), "eth1", "tenants[0] (aa)'s trunk NIC"),
    ],
    ids=["bridge", "vlan-subinterface", "vlan-fallback-bridge", "trunk-nic"],
)
def test_a_host_end_named_like_another_tenants_host_object_is_refused(aa, host_interface, what):
    """Left through, tenant bb's veth (recreated on every run) would take the name of what
    tenant aa hangs on, and delete it."""
    bb = tenant("bb", attachment=bridge_at("br-y", host_interface=host_interface))
    for tenants in ([tenant("aa", attachment=aa), bb], [bb, tenant("aa", attachment=aa)]):
        msg = problem(*tenants)
        bb_index = tenants.index(bb)
        assert msg.startswith(f"tenants[{bb_index}] (bb).attachment.host_interface: "), msg
        assert what.replace("tenants[0]", f"tenants[{1 - bb_index}]") in msg


def test_a_host_end_named_like_its_own_bridge_or_an_absent_tenants_objects_is_refused():
    assert "is its own bridge" in problem(
        tenant("aa", attachment=bridge_at("br-x", host_interface="br-x"))
    )
    # An absent tenant's host end is deleted: it must not be a present tenant's bridge.
    msg = problem(
        tenant("aa", attachment=bridge_at("br-x")),
        tenant("bb", state="absent", attachment=bridge_at("br-y", host_interface="br-x")),
    )
    assert msg.startswith("tenants[1] (bb).attachment.host_interface: 'br-x' is tenants[0]")


def test_a_bridge_named_like_a_vlan_subinterface_is_refused():
    msg = problem(tenant("aa", attachment=bridge_at("eth1.101")), tenant("bb", attachment=vlan()))
    assert msg.startswith("tenants[1] (bb).attachment.parent + vlan_id: 'eth1.101' is tenants[0]")


def test_tenants_may_share_a_bridge_a_vlan_or_a_trunk_nic():
    shared = [
        tenant("aa", attachment=bridge_at("br-t")),
        tenant("bb", attachment=bridge_at("br-t")),
        tenant("cc", attachment=vlan()),
        tenant("dd", attachment=vlan()),
        tenant("ee", attachment=bridge_at("tnvlan101")),
        tenant("ff", attachment=vlan(parent="br-t", vlan_id=7)),
    ]
    assert len(build_tenants(shared)) == 6
