#!/usr/bin/env python3
"""What one fleet host costs: site.yml on one container host of the fleet stage (the same
image, sandbox and ``community.docker.docker`` connection as tests/fleet) with N tenants, half
VLAN tenants on eth1 and half on one bridge, each with an nsproxy listener. Prints, for the first
converge and for a no-op re-run, the wall time, the controller's CPU seconds (ansible-playbook
and its children), the host's CPU seconds (the container's cgroup) and the load average: the
figures behind the README's "What a fleet of 50 hosts x 200 tenants costs". A measurement, not
a test: nothing is asserted but that both runs succeed and the second changes nothing.

    .venv/bin/python bench/fleet_host.py                 # 200 tenants
    .venv/bin/python bench/fleet_host.py --tenants 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fleet.fleet_hosts import Fleet, image_rootfs

HOST = "docker1"


def tenants(count: int) -> list[dict]:
    """``count`` tenants on 10.0.0.250/24 with the fleet's shared routes and proxy part."""
    result = []
    for i in range(count):
        if i % 2:
            attachment = {"type": "vlan", "parent": "eth1", "vlan_id": 100 + i, "mode": "bridge"}
        else:
            attachment = {"type": "bridge", "bridge": "br-tenants"}
        result.append(
            {
                "name": f"t{i:04d}",
                "attachment": attachment,
                "addresses": ["10.0.0.250/24"],
                "routes": "{{ fleet_tenant_routes }}",
                "proxy": "{{ fleet_tenant_proxy }}",
            }
        )
    return result


def figures(run) -> dict:
    return {
        "wall_s": round(run.seconds, 1),
        "controller_cpu_s": round(run.cpu_seconds, 1),
        "host_cpu_s": round(run.hosts_cpu_seconds, 1),
        "changed": run.recap[HOST]["changed"],
        "load1_after": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200, help="tenants on the host (1-4000)")
    args = parser.parse_args()
    if not 1 <= args.tenants <= 4000:
        parser.error("--tenants: 1 to 4000 (VLAN ids 100-4094)")
    if os.geteuid() != 0:
        parser.error("run as root: creates network and mount namespaces and a Docker engine")
    rootfs = image_rootfs()
    with tempfile.TemporaryDirectory(prefix="fleet-host-") as workdir:
        fleet = Fleet(Path(workdir), (HOST,))
        try:
            fleet.start(rootfs)
            fleet.edit_host_vars(
                HOST, lambda data: data.update(tenant_network_tenants=tenants(args.tenants))
            )
            first = fleet.converge(limit=HOST)
            second = fleet.converge(limit=HOST)
            if second.recap[HOST]["changed"]:
                print(f"the no-op changed: {second.changed_tasks(HOST)}", file=sys.stderr)
                return 1
            served = len(fleet.nsproxy_tenants(HOST))
        finally:
            fleet.close()
    report = {
        "tenants": args.tenants,
        "served_by_nsproxy": served,
        "first converge": figures(first),
        "no-op": figures(second),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
