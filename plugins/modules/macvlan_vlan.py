#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: macvlan_vlan
short_description: 802.1Q subinterface, macvlans in tenant namespaces, and a host shim
version_added: "0.1.0"
description:
  - On a parent NIC, manages an 802.1Q VLAN subinterface (I(vlan_id)) and, on top of it, the
    macvlan interfaces listed in I(macvlans), each created in its own network namespace (a
    tenant's). With I(vlan_id=null) the macvlans sit directly on the parent.
  - Each macvlan is created directly inside its target namespace under a temporary name, then
    renamed there, so it never collides with a name in the parent's namespace and never shows
    up half-configured on the host.
  - The macvlan mode defaults to C(bridge) (as Docker and CNI use), not the kernel's own
    default C(vepa), so macvlans on one parent can talk to each other without a hairpin
    switch.
  - I(host_shim) adds a bridge-mode macvlan in the parent's namespace with an address and host
    routes to the listed destinations. A host cannot reach its own macvlan children through the
    parent NIC (the kernel filters that path); traffic through the shim can.
  - Kernel-immutable attributes are never changed in place. A VLAN whose id, protocol or parent
    differs, a macvlan on another parent, a switch to or from C(passthru), or an existing
    interface of another kind fails with a message naming the difference, unless
    I(recreate=true), which deletes and creates it again (deleting a VLAN also deletes the
    macvlans on it; the listed ones are created again).
  - Links this module creates carry the interface alias C(tenantnet.nsproxy).
  - Changes are runtime only; re-run after a reboot or when a tenant namespace is recreated.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 >= 0.7.2 (Debian 12 python3-pyroute2, or 0.9.x from PyPI)
  - Linux with macvlan, and 802.1Q (C(8021q)) when I(vlan_id) is set; root
options:
  parent:
    description:
      - The parent NIC (for example C(eno1) or a bond) in I(netns). It must exist; it is never
        created, changed or deleted.
    type: str
    required: true
  netns:
    description:
      - Namespace of the parent, the VLAN subinterface and the host shim. A name under
        C(/run/netns) or an absolute path (C(/proc/PID/ns/net)); omitted means the namespace the
        module runs in (the host's). Never created.
    type: str
  vlan_id:
    description:
      - 802.1Q VLAN id, 1 to 4094. The subinterface is created on I(parent) and the macvlans on
        top of it.
      - Omitted or null means no VLAN; the macvlans sit directly on I(parent).
      - Immutable; see I(recreate).
    type: int
  vlan_name:
    description:
      - Name of the VLAN subinterface. Default C(<parent>.<vlan_id>), with the parent part
        shortened so that the name fits in 15 characters.
    type: str
  vlan_protocol:
    description:
      - VLAN protocol (C(802.1ad) for an S-tag / QinQ outer tag). Immutable.
    type: str
    choices: ["802.1Q", "802.1ad"]
    default: "802.1Q"
  vlan_mtu:
    description:
      - MTU of the VLAN subinterface, at most the parent's. Omitted means not managed (the
        kernel gives it the parent's MTU at creation).
    type: int
  macvlans:
    description:
      - The macvlan interfaces on the VLAN subinterface (or on the parent without I(vlan_id)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Interface name inside its namespace (at most 15 characters).
        type: str
        required: true
      netns:
        description:
          - Target namespace (a tenant's), a name under C(/run/netns) or an absolute path such as
            C(/var/run/docker/netns/ID). Omitted means the parent's namespace. Never created; a
            missing one fails before anything changes.
        type: str
      mode:
        description:
          - macvlan mode. C(bridge) lets macvlans of one parent talk directly. Changeable in
            place, except to or from C(passthru) (needs I(recreate)).
        type: str
        choices: [bridge, private, vepa, passthru, source]
        default: bridge
      mac:
        description: MAC address (unicast). Omitted means the random one the kernel picks.
        type: str
      mtu:
        description: MTU, at most the lower device's. Omitted means not managed.
        type: int
      addresses:
        description:
          - Addresses in CIDR form (C(10.0.0.250/24), C(2001:db8::250/64)). Omitted means not
            managed.
        type: list
        elements: str
      purge_addresses:
        description: Remove addresses not listed in I(addresses) (IPv6 link-local ones stay).
        type: bool
        default: false
      link_state:
        description: Administrative state.
        type: str
        choices: [up, down]
        default: up
  host_shim:
    description:
      - A bridge-mode macvlan in the parent's namespace, on the same lower device as the
        macvlans, so the host can reach them. Its address set is exactly I(address); its routes
        are exactly I(routes) (host routes via the shim, protocol C(static)).
    type: dict
    suboptions:
      name:
        description: Interface name of the shim (at most 15 characters).
        type: str
        required: true
      address:
        description:
          - The shim's address in CIDR form. Use a free address of the tenant subnet as a /32
            (C(192.0.2.254/32)) so no second connected route competes with the parent's.
        type: str
        required: true
      routes:
        description:
          - Destinations (CIDR or host addresses) the host reaches through the shim, usually the
            macvlans' addresses or their range.
        type: list
        elements: str
        default: []
      mtu:
        description: MTU of the shim, at most the lower device's. Omitted means not managed.
        type: int
  state:
    description:
      - C(present) creates or updates the VLAN subinterface, the listed macvlans and the shim.
      - C(absent) deletes the listed macvlans and the shim, and the VLAN subinterface when this
        collection created it (alias C(tenantnet.nsproxy)); a VLAN made by someone else (for
        example Docker's C(eth0.N)) is left in place with a warning. The parent is never
        touched.
    type: str
    choices: [present, absent]
    default: present
  recreate:
    description:
      - Delete and create again an existing VLAN subinterface, macvlan or shim whose immutable
        attributes (VLAN id, protocol, parent; macvlan parent, C(passthru) mode) or kind differ.
        Without it such a difference fails and nothing changes.
    type: bool
    default: false
notes:
  - Check mode computes the exact plan (C(actions)) and reports the same C(changed) as a real
    run, without changing anything. C(--diff) shows before/after of the compared attributes.
  - Every input is validated before anything is touched. Missing parent, missing namespace, a
    VLAN id outside 1-4094, an over-long name, a bad CIDR or MAC, or an MTU above the lower
    device's fail with a message naming the field.
  - If a step fails half-way, the interfaces this call created are deleted again.
  - Many clouds and Wi-Fi NICs drop frames from unknown MACs, which breaks macvlan.
seealso:
  - module: tenantnet.nsproxy.netns
  - module: tenantnet.nsproxy.netns_route
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
"""

EXAMPLES = r"""
- name: VLAN 50 on eno1, one macvlan per tenant, and a shim so the host reaches them
  tenantnet.nsproxy.macvlan_vlan:
    parent: eno1
    vlan_id: 50
    macvlans:
      - name: eth1
        netns: acme
        addresses: [192.0.2.10/24]
      - name: eth1
        netns: globex
        addresses: [192.0.2.11/24]
        mac: "02:00:c0:00:02:0b"
    host_shim:
      name: mvshim50
      address: 192.0.2.254/32
      routes: [192.0.2.10, 192.0.2.11]

- name: Macvlan directly on the parent (untagged), in a Docker container's namespace
  tenantnet.nsproxy.macvlan_vlan:
    parent: eno2
    vlan_id: null
    macvlans:
      - name: lan0
        netns: /var/run/docker/netns/1a2b3c4d5e6f
        addresses: [198.51.100.20/24]

- name: Move the tenant to VLAN 51 (the old subinterface and its macvlans are recreated)
  tenantnet.nsproxy.macvlan_vlan:
    parent: eno1
    vlan_id: 51
    vlan_name: eno1.50
    recreate: true
    macvlans:
      - {name: eth1, netns: acme, addresses: [192.0.2.10/24]}

- name: Remove the tenant's macvlan, the shim and the VLAN subinterface
  tenantnet.nsproxy.macvlan_vlan:
    parent: eno1
    vlan_id: 50
    state: absent
    macvlans:
      - {name: eth1, netns: acme}
    host_shim: {name: mvshim50, address: 192.0.2.254/32}
"""

RETURN = r"""
vlan:
  description:
    - The VLAN subinterface (null without I(vlan_id) or after I(state=absent)). Current kernel
      state; in check mode the state before the planned changes.
  returned: always
  type: dict
  sample:
    name: eno1.50
    ifindex: 7
    kind: vlan
    mtu: 1500
    mac: "52:54:00:12:34:56"
    operstate: UP
    state: up
    addresses: []
    master: null
    alias: tenantnet.nsproxy
    owned: true
    netns: null
    link_index: 2
    link_netnsid: null
    kind_data: {id: 50, protocol: 33024}
macvlans:
  description:
    - The listed macvlans that exist, each as returned for I(vlan), plus C(lower) (the lower
      device's name). C(kind_data.mode) is the macvlan mode.
  returned: always
  type: list
  elements: dict
  sample:
    - name: eth1
      kind: macvlan
      netns: acme
      lower: eno1.50
      mac: "02:00:c0:00:02:0a"
      addresses: [192.0.2.10/24]
      state: up
      kind_data: {mode: bridge}
host_shim:
  description: The shim (as for I(vlan)) plus C(routes), its host routes' destinations.
  returned: always
  type: dict
  sample:
    name: mvshim50
    kind: macvlan
    addresses: [192.0.2.254/32]
    routes: [192.0.2.10/32, 192.0.2.11/32]
    kind_data: {mode: bridge}
actions:
  description:
    - The planned operations in order (also in check mode), e.g. C(vlan_create),
      C(macvlan_create), C(macvlan_mode), C(link_set), C(addr_add), C(addr_del), C(link_del),
      C(route_replace), C(route_delete), each with the interface and namespace.
  returned: always
  type: list
  elements: dict
  sample:
    - {op: macvlan_create, ifname: eth1, netns: acme, lower: eno1.50, lower_netns: null,
       mode: bridge}
    - {op: addr_add, ifname: eth1, netns: acme, address: 192.0.2.10/24}
differences:
  description: Names of the compared attributes that differed (C(macvlan eth1@acme.mode)...).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    build_result,
    run_module,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.macvlan import (
    MACVLAN_MODES,
    apply,
    check_environment,
    gather,
    normalize_params,
    plan,
    read_result,
    unowned_vlan_left,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsSet,
    require_pyroute2,
)

MACVLAN_OPTIONS = dict(
    name=dict(type="str", required=True),
    netns=dict(type="str"),
    mode=dict(type="str", choices=list(MACVLAN_MODES), default="bridge"),
    mac=dict(type="str"),
    mtu=dict(type="int"),
    addresses=dict(type="list", elements="str"),
    purge_addresses=dict(type="bool", default=False),
    link_state=dict(type="str", choices=["up", "down"], default="up"),
)

SHIM_OPTIONS = dict(
    name=dict(type="str", required=True),
    address=dict(type="str", required=True),
    routes=dict(type="list", elements="str", default=[]),
    mtu=dict(type="int"),
)

ARGUMENT_SPEC = dict(
    parent=dict(type="str", required=True),
    netns=dict(type="str"),
    vlan_id=dict(type="int"),
    vlan_name=dict(type="str"),
    vlan_protocol=dict(type="str", choices=["802.1Q", "802.1ad"], default="802.1Q"),
    vlan_mtu=dict(type="int"),
    macvlans=dict(type="list", elements="dict", default=[], options=MACVLAN_OPTIONS),
    host_shim=dict(type="dict", options=SHIM_OPTIONS),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    recreate=dict(type="bool", default=False),
)


def run(module):
    want = normalize_params(module.params)
    with NetnsSet() as namespaces:
        have = gather(namespaces, want)
        check_environment(want, have)
        actions, tracker = plan(want, have)
        if actions and not module.check_mode:
            apply(namespaces, actions)
        objects = read_result(namespaces, want)
    kept = unowned_vlan_left(want, have)
    if kept:
        module.warn(
            f"VLAN subinterface '{kept}' was not created by this collection, so it was left "
            "in place; delete it yourself if nothing else uses it"
        )
    return build_result(module, actions, tracker, **objects)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    require_pyroute2(module)
    run_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
