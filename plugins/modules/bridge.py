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
      - Name of the bridge. At most 15 characters.
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
        never touched.
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
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
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

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    DiffTracker,
    ModuleFailure,
    ParamError,
    Plan,
    Rollback,
    apply_plan,
    build_result,
    netns_path,
    normalize_link_addresses,
    normalize_mac,
    plan_link_changes,
    run_module,
    validate_ifname,
    validate_int_range,
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsSet,
    apply_link_action,
    create_link,
    delete_link,
    find_link,
    links_with_master,
    read_link,
    require_pyroute2,
    set_link,
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

# Bridge options: user key -> IFLA_BR_* keyword of pyroute2 and a converter to the kernel value.
BRIDGE_OPTIONS = (
    ("stp", "br_stp_state", int),
    ("vlan_filtering", "br_vlan_filtering", int),
    ("default_pvid", "br_vlan_default_pvid", int),
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


def bridge_view(link, ports):
    """The returned/compared bridge object: the link dict plus stp, vlan_filtering,
    default_pvid (None if the kernel has no VLAN filtering) and ports."""
    if link is None:
        return None
    data = link.get("kind_data") or {}
    view = dict((k, v) for k, v in link.items() if k not in ("kind_data", "link_netnsid"))
    stp_state = data.get("stp_state")
    filtering = data.get("vlan_filtering")
    view.update(
        stp=None if stp_state is None else bool(stp_state),
        vlan_filtering=None if filtering is None else bool(filtering),
        default_pvid=data.get("vlan_default_pvid"),
        ports=ports,
    )
    return view


def read_have(ns, want):
    """The bridge as it is (bridge_view dict or None) and, for each wanted port, its current
    master; missing wanted ports raise ParamError (before anything is touched)."""
    link = read_link(ns, want["name"])
    ports = []
    if link is not None and link["kind"] == "bridge":
        ports = links_with_master(ns, link["ifindex"])
    have = bridge_view(link, ports)
    if want["state"] == "present":
        for i, port in enumerate(want["ports"] or []):
            port_link = read_link(ns, port)
            if port_link is None:
                raise ParamError(f"ports[{i}]", f"interface '{port}' does not exist in {ns.label}")
    return have


def build_plan(want, have, label):
    """want + have -> (plan, tracker). Pure: no netlink calls, same result in check mode."""
    plan, tracker = Plan(), DiffTracker()
    name, netns = want["name"], want["netns"]
    if want["state"] == "absent":
        if have is not None:
            if have["kind"] != "bridge":
                raise ModuleFailure(
                    f"name: '{name}' in {label} is a {have['kind'] or 'plain device'}, not a "
                    "bridge; not deleting it"
                )
            tracker.add("present", False, True)
            plan.add("link_del", ifname=name, netns=netns)
        return plan, tracker
    if have is not None and have["kind"] != "bridge":
        if not want["recreate"]:
            raise ModuleFailure(
                f"name: '{name}' already exists in {label} as a "
                f"{have['kind'] or 'plain device'}, not a bridge. Set recreate: true to delete "
                "it and create the bridge."
            )
        plan.add("link_del", ifname=name, netns=netns, reason="recreate")
        have = None
    options = want["options"]
    if have is None:
        tracker.add("present", True, False)
        create = dict((k, v) for k, v in options.items() if v is not None)
        for key, value in create.items():
            tracker.add(key, value, None)
        plan.add("bridge_add", ifname=name, netns=netns, **create)
        current = {}
    else:
        current = have
        changes = {}
        for key, value in options.items():
            if tracker.add(key, value, have.get(key)):
                changes[key] = value
        if changes:
            plan.add("bridge_set", ifname=name, netns=netns, **changes)
    plan_link_changes(plan, tracker, name, netns, want["link"], have, want["purge_addresses"])
    if want["ports"] is not None:
        current_ports = current.get("ports") or []
        after = list(want["ports"])
        if not want["purge_ports"]:
            after += [p for p in current_ports if p not in after]
        tracker.add("ports", sorted(after), sorted(current_ports))
        for port in want["ports"]:
            if port not in current_ports:
                plan.add("link_set", ifname=port, netns=netns, master=name)
        if want["purge_ports"]:
            for port in current_ports:
                if port not in want["ports"]:
                    plan.add("link_set", ifname=port, netns=netns, master="")
    return plan, tracker


def bridge_attrs(action):
    attrs = {}
    for key, nla, convert in BRIDGE_OPTIONS:
        if key in action:
            attrs[nla] = convert(action[key])
    return attrs


def apply(nss, plan):
    """Execute the plan; on failure undo what this call created."""
    rollback = Rollback()

    def step(action):
        op = action["op"]
        ns = nss.get(action["netns"], "netns")
        if op == "bridge_add":
            create_link(ns, rollback, action["ifname"], "bridge", **bridge_attrs(action))
        elif op == "bridge_set":
            msg = find_link(ns, action["ifname"])
            set_link(ns, msg["index"], action["ifname"], kind="bridge", **bridge_attrs(action))
        elif op == "link_del":
            msg = find_link(ns, action["ifname"])
            if msg is not None:
                delete_link(ns, msg["index"], action["ifname"])
        else:
            apply_link_action(nss, action, rollback)

    try:
        apply_plan(plan, step, rollback)
    except ModuleFailure as failure:
        if failure.extra.get("errno") == errno.EOPNOTSUPP and any(
            k in (failure.extra.get("failed_action") or {})
            for k in ("vlan_filtering", "default_pvid")
        ):
            failure.msg = (
                "vlan_filtering/default_pvid: this kernel has no bridge VLAN filtering "
                "(CONFIG_BRIDGE_VLAN_FILTERING is off). " + failure.msg
            )
        raise


def run(module):
    want = build_want(module.params)
    with NetnsSet() as nss:
        ns = nss.get(want["netns"], "netns")
        have = read_have(ns, want)
        plan, tracker = build_plan(want, have, ns.label)
        if plan and not module.check_mode:
            apply(nss, plan)
        if module.check_mode:
            result_view = have
        else:
            link = read_link(ns, want["name"])
            ports = links_with_master(ns, link["ifindex"]) if link else []
            result_view = bridge_view(link, ports)
        return build_result(module, plan, tracker, interface=result_view)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    require_pyroute2(module)
    run_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
