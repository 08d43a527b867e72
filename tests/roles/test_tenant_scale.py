"""200 tenants through site.yml (tag tenant_network) in a sandbox: first converge, then a no-op.

Half the tenants are VLAN tenants (veth fallback on kernels without 802.1Q), half are bridge
tenants; all use 10.0.0.250/24 and three routes. The test proves that the whole set converges,
that the re-run changes nothing, and prints both durations (no timed assertion: the machines
are shared and noisy; the README reports measured figures).
"""

from __future__ import annotations

import os
import time

import pytest
import yaml

from tests.roles.site_sandbox import changed_tasks, open_site_host, recap

COUNT = 200


def scale_inventory(directory, count=COUNT):
    tenants = []
    for i in range(count):
        tenant = {
            "name": f"t{i:03d}",
            "addresses": ["10.0.0.250/24"],
            "routes": [
                {"dst": "default", "gateway": "10.0.0.254"},
                {"dst": "10.0.0.0/8", "gateway": "10.0.0.1"},
                {"dst": "192.168.0.0/16", "gateway": "10.0.0.1"},
            ],
        }
        if i % 2:
            tenant["attachment"] = {"type": "vlan", "parent": "eth1", "vlan_id": 100 + i}
        else:
            tenant["attachment"] = {"type": "bridge", "bridge": "br-tenants"}
        tenants.append(tenant)
    (directory / "group_vars").mkdir(parents=True)
    (directory / "group_vars" / "docker_hosts.yml").write_text(
        yaml.safe_dump({"tenant_network_tenants": tenants})
    )
    (directory / "hosts.yml").write_text(
        "docker_hosts:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: /usr/bin/python3\n"
    )
    return directory


def test_200_tenants_converge_and_a_rerun_changes_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network and mount namespaces")
    inventory = scale_inventory(tmp_path / "inventory")
    sb, site = open_site_host(tmp_path)
    try:
        start = time.monotonic()
        first = site.converge(inventory=inventory, flags=["--tags", "tenant_network"])
        first_s = time.monotonic() - start
        assert recap(first)["changed"] >= 1
        names = site.netns()
        assert {f"t{i:03d}" for i in range(COUNT)} <= names
        links = site.links()
        assert sum(1 for name in links if name.startswith("tn-t")) == COUNT
        # Spot checks in the kernel: the last tenant of each kind is complete.
        for name in ("t198", "t199"):
            routes = {(r["dst"], r.get("gateway")) for r in site.ip("route", netns=name)}
            assert ("default", "10.0.0.254") in routes and ("10.0.0.0/8", "10.0.0.1") in routes

        start = time.monotonic()
        second = site.converge(inventory=inventory, flags=["--tags", "tenant_network"])
        second_s = time.monotonic() - start
        assert recap(second)["changed"] == 0, f"changed: {changed_tasks(second)}"
        print(
            f"\n{COUNT} tenants via site.yml --tags tenant_network: first converge "
            f"{first_s:.1f} s, no-op re-run {second_s:.1f} s"
        )
    finally:
        sb.close()
