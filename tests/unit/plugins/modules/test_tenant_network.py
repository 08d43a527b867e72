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
