#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bridge
short_description: Manage a Linux bridge and its ports in any network namespace
version_added: "0.1.0"
description:
  - Creates, reconciles or deletes a Linux bridge through netlink (pyroute2); the C(ip) command
    is never run.
  - The bridge lives in O(netns) (default the host namespace). Bridges this module creates carry
    the interface alias C(tenantnet.nsproxy) (ownership tag).
  - Only the options you set are compared and changed; the defaults are the kernel's, so a
    second run with the same input reports no change.
  - If O(name) exists but is not a bridge, the module fails unless O(recreate=true).
  - If anything fails half-way, what this call created is removed again.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 0.7 or later (Debian 12 python3-pyroute2, or 0.9.x from PyPI) on the managed host
  - root (CAP_NET_ADMIN, and CAP_SYS_ADMIN to enter namespaces)
options:
  name:
    description:
      - Name of the bridge. At most 15 bytes (15 ASCII characters); no C(/), C(:), C(%) or
        whitespace.
    type: str
    required: true
  netns:
    description:
      - Namespace of the bridge. A name under C(/run/netns), or an absolute path such as
        C(/proc/PID/ns/net) or C(/var/run/docker/netns/ID). Omitted means the host namespace.
      - The namespace must exist; it is never created by this module.
    type: str
  state:
    description:
      - V(present) creates or reconciles the bridge, V(absent) deletes it (its ports are
        released, not deleted).
    type: str
    choices: [present, absent]
    default: present
  stp:
    description:
      - Spanning tree protocol. Off by default, like Docker and CNI bridges (with STP on, every
        new port waits twice the forward delay, 30 s, before it forwards).
    type: bool
    default: false
  vlan_filtering:
    description:
      - Turn on 802.1Q VLAN filtering on the bridge. Omitted leaves it alone (the kernel
        default is off). Needs a kernel with CONFIG_BRIDGE_VLAN_FILTERING; without it the
        module fails with a sentence saying so.
    type: bool
  default_pvid:
    description:
      - VLAN id given to untagged traffic on new ports when VLAN filtering is on (0-4094,
        0 = none; the kernel default is 1). Omitted leaves it alone.
    type: int
  mtu:
    description:
      - MTU of the bridge (68-65535). Omitted leaves it alone.
    type: int
  mac:
    description:
      - MAC address of the bridge. Setting it pins the MAC, so it no longer follows the
        lowest port MAC.
    type: str
  link_state:
    description:
      - Administrative state of the bridge.
    type: str
    choices: [up, down]
    default: up
  addresses:
    description:
      - Addresses of the bridge in CIDR form (C(10.0.0.1/24), C(2001:db8::1/64)).
      - Omitted means addresses are not managed. Kernel-made IPv6 link-local addresses are
        never touched, and listing one (C(fe80::/10)) is refused.
      - One IPv6 address listed with two prefix lengths is refused. An IPv6 address the bridge
        holds with another prefix length than the listed one is replaced (removed, then added).
    type: list
    elements: str
  purge_addresses:
    description:
      - Remove addresses that are not listed in O(addresses) (only when O(addresses) is given).
    type: bool
    default: false
  ports:
    description:
      - Interfaces of O(netns) to enslave to the bridge. Each must exist. A port enslaved to
        another bridge is moved to this one.
      - Omitted means ports are not managed.
    type: list
    elements: str
  purge_ports:
    description:
      - Release ports of this bridge that are not listed in O(ports), so the port set is exact.
        Released ports are detached, never deleted. This includes ports attached by other
        tools (they carry no C(tenantnet.nsproxy) alias), since the user declared the set.
    type: bool
    default: false
  recreate:
    description:
      - Delete and re-create O(name) when it exists with another kind. Without it such a
        conflict fails and nothing is changed.
    type: bool
    default: false
notes:
  - Check mode computes the exact plan (returned as RV(actions)) and changes nothing.
  - Diff mode shows before and after of the options you set.
  - Netlink changes are runtime state; a reboot needs a re-run.
seealso:
  - module: tenantnet.nsproxy.veth
  - module: tenantnet.nsproxy.netns
extends_documentation_fragment: [tenantnet.nsproxy.attributes, tenantnet.nsproxy.attributes.netlink]
"""

EXAMPLES = r"""
- name: A per-tenant bridge inside the tenant namespace, with the tenant gateway address
  tenantnet.nsproxy.bridge:
    name: br0
    netns: acme
    addresses: [10.0.0.1/24]

- name: Exact port set on a host bridge
  tenantnet.nsproxy.bridge:
    name: br-tenants
    ports: [vh-acme, vh-globex]
    purge_ports: true

- name: VLAN-aware bridge (kernel with CONFIG_BRIDGE_VLAN_FILTERING)
  tenantnet.nsproxy.bridge:
    name: br-trunk
    vlan_filtering: true
    default_pvid: 10

- name: Remove the bridge (its ports are released, not deleted)
  tenantnet.nsproxy.bridge:
    name: br-tenants
    state: absent
"""

RETURN = r"""
actions:
  description: The planned netlink operations, in order (also in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"op": "bridge_add", "ifname": "br0", "netns": "acme", "stp": false},
           {"op": "addr_add", "ifname": "br0", "netns": "acme", "address": "10.0.0.1/24"}]
differences:
  description: Option keys whose current value differed from the wanted one.
  returned: always
  type: list
  elements: str
  sample: ["stp", "ports"]
interface:
  description: The bridge after the call (null when absent).
  returned: always
  type: dict
  sample: {"name": "br0", "ifindex": 3, "kind": "bridge", "mtu": 1500,
           "mac": "02:00:00:00:00:01", "operstate": "UP", "state": "up",
           "addresses": ["10.0.0.1/24"], "master": null, "alias": "tenantnet.nsproxy",
           "owned": true, "netns": "acme", "stp": false, "vlan_filtering": false,
           "default_pvid": 1, "ports": ["vh-acme"]}
"""

import errno

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.bridge import (
    bridge_view,
    plan_bridge,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.executor import execute
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    links_with_master,
    read_link,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    netns_path,
    normalize_link_addresses,
    normalize_mac,
    validate_ifname,
    validate_int_range,
    validate_mtu,
)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    netns=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    stp=dict(type="bool", default=False),
    vlan_filtering=dict(type="bool"),
    default_pvid=dict(type="int"),
    mtu=dict(type="int"),
    mac=dict(type="str"),
    link_state=dict(type="str", choices=["up", "down"], default="up"),
    addresses=dict(type="list", elements="str"),
    purge_addresses=dict(type="bool", default=False),
    ports=dict(type="list", elements="str"),
    purge_ports=dict(type="bool", default=False),
    recreate=dict(type="bool", default=False),
)


def build_want(params):
    """Validate and normalise the user's input; raise ParamError before anything is touched."""
    name = validate_ifname(params["name"], "name")
    netns_path(params["netns"], "netns")
    ports = None
    if params["ports"] is not None:
        ports = []
        for i, port in enumerate(params["ports"]):
            validate_ifname(port, f"ports[{i}]")
            if port == name:
                raise ParamError(f"ports[{i}]", "a bridge cannot be a port of itself")
            if port not in ports:
                ports.append(port)
    return dict(
        name=name,
        netns=params["netns"] or None,
        state=params["state"],
        recreate=params["recreate"],
        purge_addresses=params["purge_addresses"],
        purge_ports=params["purge_ports"],
        ports=ports,
        options=dict(
            stp=params["stp"],
            vlan_filtering=params["vlan_filtering"],
            default_pvid=validate_int_range(params["default_pvid"], "default_pvid", 0, 4094),
        ),
        link=dict(
            mtu=validate_mtu(params["mtu"], "mtu"),
            mac=normalize_mac(params["mac"], "mac"),
            state=params["link_state"],
            addresses=normalize_link_addresses(params["addresses"], "addresses"),
        ),
    )


def read_bridge(ns, name):
    """The bridge ``name`` in ``ns`` as a ``bridge_view`` (with its ports), or None."""
    link = read_link(ns, name)
    ports = []
    if link is not None and link["kind"] == "bridge":
        ports = links_with_master(ns, link["ifindex"])
    return bridge_view(link, ports)


def read_have(ctx, want):
    """The bridge as it is (``bridge_view`` or None) and the label of its namespace. A wanted
    port that does not exist fails before anything is touched (in check mode: a warning, an
    earlier task may create it)."""
    ns = ctx.netns(want["netns"])
    if want["state"] == "present":
        for i, port in enumerate(want["ports"] or []):
            if read_link(ns, port) is None:
                ctx.missing(f"ports[{i}]", f"interface '{port}' does not exist in {ns.label}")
    return dict(bridge=read_bridge(ns, want["name"]), label=ns.label)


def build_plan(want, have, label):
    """want + have -> (plan, tracker). Pure: no netlink calls, same result in check mode."""
    plan, tracker = Plan(), DiffTracker()
    plan_bridge(plan, tracker, want, have, label)
    return plan, tracker


def apply(ctx, action, rollback):
    """The netlink executor, with a sentence for a kernel without bridge VLAN filtering."""
    try:
        execute(ctx, action, rollback)
    except ModuleFailure as failure:
        if failure.extra.get("errno") == errno.EOPNOTSUPP and (
            "vlan_filtering" in action or "default_pvid" in action
        ):
            failure.msg = (
                "vlan_filtering/default_pvid: this kernel has no bridge VLAN filtering "
                "(CONFIG_BRIDGE_VLAN_FILTERING is off). " + failure.msg
            )
        raise


def read_result(ctx, want, have, plan):
    """The bridge after the call (before it, in check mode)."""
    if ctx.check_mode:
        return dict(interface=have["bridge"])
    return dict(interface=read_bridge(ctx.netns(want["netns"]), want["name"]))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(
        module,
        want=build_want,
        have=read_have,
        plan=lambda want, have: build_plan(want, have["bridge"], have["label"]),
        apply=apply,
        result=read_result,
    )


if __name__ == "__main__":
    main()
