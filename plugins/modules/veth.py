#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: veth
short_description: Manage a veth pair whose ends may live in different network namespaces
version_added: "0.1.0"
description:
  - Creates, reconciles or deletes a veth pair through netlink (pyroute2); the C(ip) command is
    never run.
  - The end O(name) lives in O(netns) and the end O(peer) in O(peer_netns); both default to the
    namespace the module runs in (the host's).
  - The peer is created directly inside its namespace under a temporary name and then renamed,
    so it never appears on the host, not even half-configured.
  - Links this module creates carry the interface alias C(tenantnet.nsproxy) (ownership tag).
  - Only the options you set are compared and changed. A second run with the same input
    reports no change.
  - Which two interfaces are paired cannot change in place. If O(name) exists but is not a veth,
    or is not paired with O(peer) in O(peer_netns), the module fails unless O(recreate=true).
  - If anything fails half-way, what this call created is removed again.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 0.7 or later (Debian 12 python3-pyroute2, or 0.9.x from PyPI) on the managed host
  - root (CAP_NET_ADMIN and CAP_SYS_ADMIN to enter namespaces)
options:
  name:
    description:
      - Name of the first end, in O(netns). At most 15 characters.
    type: str
    required: true
  netns:
    description:
      - Namespace of O(name). A name under C(/run/netns), or an absolute path such as
        C(/proc/PID/ns/net) or C(/var/run/docker/netns/ID). Omitted means the host namespace.
      - The namespace must exist; it is never created by this module.
    type: str
  peer:
    description:
      - Name of the other end, in O(peer_netns). At most 15 characters.
      - Required when O(state=present).
    type: str
  peer_netns:
    description:
      - Namespace of O(peer), same forms as O(netns). Omitted means the host namespace.
    type: str
  state:
    description:
      - V(present) creates or reconciles the pair, V(absent) deletes it (both ends go together).
    type: str
    choices: [present, absent]
    default: present
  mtu:
    description:
      - MTU of both ends (68-65535). Omitted leaves the MTU alone (the kernel default is 1500).
    type: int
  mac:
    description:
      - MAC address of O(name) (unicast; any case, C(:) or C(-) separators).
    type: str
  peer_mac:
    description:
      - MAC address of O(peer).
    type: str
  link_state:
    description:
      - Administrative state of O(name).
    type: str
    choices: [up, down]
    default: up
  peer_link_state:
    description:
      - Administrative state of O(peer).
    type: str
    choices: [up, down]
    default: up
  addresses:
    description:
      - Addresses of O(name) in CIDR form (C(10.0.0.1/24), C(2001:db8::1/64)), IPv4 and IPv6.
      - Omitted means addresses are not managed. Kernel-made IPv6 link-local addresses are
        never touched.
    type: list
    elements: str
  peer_addresses:
    description:
      - Addresses of O(peer) in CIDR form.
    type: list
    elements: str
  purge_addresses:
    description:
      - Remove addresses that are not listed in O(addresses) / O(peer_addresses) (only for
        the lists that are given).
    type: bool
    default: false
  master:
    description:
      - Bridge to enslave O(name) to; it must exist in O(netns) and be a bridge.
      - An empty string detaches O(name) from any master. Omitted leaves it alone.
    type: str
  recreate:
    description:
      - Delete and re-create the pair when O(name) exists with another kind or another peer
        (both immutable). Without it such a conflict fails and nothing is changed.
    type: bool
    default: false
notes:
  - Check mode computes the exact plan (returned as RV(actions)) and changes nothing.
  - Diff mode shows before and after of the options you set.
  - Netlink changes are runtime state; a reboot or container restart needs a re-run.
seealso:
  - module: tenantnet.nsproxy.netns
  - module: tenantnet.nsproxy.bridge
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
"""

EXAMPLES = r"""
- name: Wire tenant acme into its bridge; the peer is created directly inside netns acme
  tenantnet.nsproxy.veth:
    name: vh-acme
    master: br-acme
    peer: eth0
    peer_netns: acme
    peer_addresses: [10.0.0.2/24]
    mtu: 1500

- name: A pair between two namespaces, exact addresses on both ends
  tenantnet.nsproxy.veth:
    name: to-red
    netns: blue
    peer: to-blue
    peer_netns: red
    addresses: [192.0.2.1/31, "2001:db8::1/127"]
    peer_addresses: [192.0.2.0/31, "2001:db8::/127"]
    purge_addresses: true

- name: Peer it into a container by its Docker sandbox path
  tenantnet.nsproxy.veth:
    name: vh-web1
    peer: eth1
    peer_netns: /var/run/docker/netns/1a2b3c4d5e6f

- name: Remove the pair (both ends)
  tenantnet.nsproxy.veth:
    name: vh-acme
    state: absent
"""

RETURN = r"""
actions:
  description: The planned netlink operations, in order (also in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"op": "veth_add", "ifname": "vh-acme", "netns": null, "peer": "eth0",
            "peer_netns": "acme"}, {"op": "link_set", "ifname": "vh-acme", "netns": null,
            "master": "br-acme"}]
differences:
  description: Option keys whose current value differed from the wanted one.
  returned: always
  type: list
  elements: str
  sample: ["mtu", "peer.addresses"]
interface:
  description: The O(name) end after the call (null when absent).
  returned: always
  type: dict
  sample: {"name": "vh-acme", "ifindex": 7, "kind": "veth", "mtu": 1500,
           "mac": "02:00:00:00:00:01", "operstate": "UP", "state": "up", "addresses": [],
           "master": "br-acme", "alias": "tenantnet.nsproxy", "owned": true, "netns": null,
           "link_index": 2, "link_netnsid": 0, "kind_data": {}}
peer:
  description: The O(peer) end after the call (null when absent), same keys as RV(interface).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    OWNER_TAG,
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
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsSet,
    apply_link_action,
    create_link,
    delete_link,
    find_link,
    netnsid_of,
    read_link,
    require_pyroute2,
    set_link,
    temp_ifname,
)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    netns=dict(type="str"),
    peer=dict(type="str"),
    peer_netns=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    mtu=dict(type="int"),
    mac=dict(type="str"),
    peer_mac=dict(type="str"),
    link_state=dict(type="str", choices=["up", "down"], default="up"),
    peer_link_state=dict(type="str", choices=["up", "down"], default="up"),
    addresses=dict(type="list", elements="str"),
    peer_addresses=dict(type="list", elements="str"),
    purge_addresses=dict(type="bool", default=False),
    master=dict(type="str"),
    recreate=dict(type="bool", default=False),
)


def build_want(params):
    """Validate and normalise the user's input; raise ParamError before anything is touched."""
    want = dict(
        name=validate_ifname(params["name"], "name"),
        peer=validate_ifname(params["peer"], "peer") if params["peer"] is not None else None,
        netns=params["netns"] or None,
        peer_netns=params["peer_netns"] or None,
        state=params["state"],
        recreate=params["recreate"],
        purge_addresses=params["purge_addresses"],
    )
    netns_path(want["netns"], "netns")
    netns_path(want["peer_netns"], "peer_netns")
    if want["state"] == "present" and want["peer"] is None:
        raise ParamError("peer", "required when state is present (the name of the other end)")
    if want["peer"] == want["name"] and netns_path(want["netns"]) == netns_path(want["peer_netns"]):
        raise ParamError("peer", "must differ from name when both ends share a namespace")
    mtu = validate_mtu(params["mtu"], "mtu")
    master = params["master"]
    if master:
        validate_ifname(master, "master")
    want["end"] = dict(
        mtu=mtu,
        mac=normalize_mac(params["mac"], "mac"),
        master=master,
        state=params["link_state"],
        addresses=normalize_link_addresses(params["addresses"], "addresses"),
    )
    want["peer_end"] = dict(
        mtu=mtu,
        mac=normalize_mac(params["peer_mac"], "peer_mac"),
        state=params["peer_link_state"],
        addresses=normalize_link_addresses(params["peer_addresses"], "peer_addresses"),
    )
    return want


def read_have(nss, want):
    """Current state: both ends (describe_link dicts or None) and whether they are paired."""
    ns = nss.get(want["netns"], "netns")
    end = read_link(ns, want["name"])
    peer_end = None
    paired = False
    if want["peer"] is not None:
        pns = nss.get(want["peer_netns"], "peer_netns")
        peer_end = read_link(pns, want["peer"])
        paired = is_pair(ns, end, pns, peer_end)
    return dict(end=end, peer_end=peer_end, paired=paired)


def is_pair(ns, end, pns, peer_end):
    """True if ``end`` (in ``ns``) and ``peer_end`` (in ``pns``) are the two ends of one veth:
    each refers to the other's ifindex, in the right namespace."""
    if not end or not peer_end or end["kind"] != "veth" or peer_end["kind"] != "veth":
        return False
    if end["link_index"] != peer_end["ifindex"] or peer_end["link_index"] != end["ifindex"]:
        return False
    if ns.same_as(pns):
        return end["link_netnsid"] is None and end["ifindex"] != peer_end["ifindex"]
    nsid = netnsid_of(ns, pns)
    return nsid is not None and end["link_netnsid"] == nsid


def check_master(nss, want):
    """The bridge named in ``master`` must exist in ``netns`` and be a bridge."""
    master = want["end"]["master"]
    if not master or want["state"] != "present":
        return
    ns = nss.get(want["netns"], "netns")
    link = read_link(ns, master)
    if link is None:
        raise ParamError("master", f"bridge '{master}' does not exist in {ns.label}")
    if link["kind"] != "bridge":
        raise ParamError("master", f"'{master}' in {ns.label} is a {link['kind']}, not a bridge")


def describe_conflict(want, have, ns_label, pns_label):
    """A sentence for an existing ``name`` that cannot become the wanted pair, or None."""
    end = have["end"]
    if end is None or have["paired"]:
        return None
    if end["kind"] != "veth":
        return (
            f"name: '{want['name']}' already exists in {ns_label} as a "
            f"{end['kind'] or 'plain device'}, not a veth"
        )
    return (
        f"peer: veth '{want['name']}' in {ns_label} is paired with another interface "
        f"(ifindex {end['link_index']}, nsid {end['link_netnsid']}), not with "
        f"'{want['peer']}' in {pns_label}; the peer of a veth cannot be changed in place"
    )


def build_plan(want, have, labels):
    """want + have -> (plan, tracker). Pure: no netlink calls, same result in check mode."""
    plan, tracker = Plan(), DiffTracker()
    end, peer_end = have["end"], have["peer_end"]
    if want["state"] == "absent":
        if end is not None:
            if end["kind"] != "veth":
                raise ModuleFailure(
                    f"name: '{want['name']}' in {labels[0]} is a {end['kind'] or 'plain device'}, "
                    "not a veth; not deleting it"
                )
            tracker.add("present", False, True)
            plan.add("link_del", ifname=want["name"], netns=want["netns"])
        return plan, tracker
    conflict = describe_conflict(want, have, labels[0], labels[1])
    if conflict and not want["recreate"]:
        raise ModuleFailure(conflict + ". Set recreate: true to delete and re-create it.")
    if conflict:
        plan.add("link_del", ifname=want["name"], netns=want["netns"], reason="recreate")
        end = None
    if end is None:
        if peer_end is not None:
            raise ModuleFailure(
                f"peer: '{want['peer']}' already exists in {labels[1]} "
                f"({peer_end['kind'] or 'plain device'}) and is not the peer of "
                f"'{want['name']}'; remove it or choose another peer name"
            )
        tracker.add("present", True, False)
        plan.add(
            "veth_add",
            ifname=want["name"],
            netns=want["netns"],
            peer=want["peer"],
            peer_netns=want["peer_netns"],
        )
        peer_end = None
    plan_link_changes(
        plan, tracker, want["name"], want["netns"], want["end"], end, want["purge_addresses"]
    )
    plan_link_changes(
        plan,
        tracker,
        want["peer"],
        want["peer_netns"],
        want["peer_end"],
        peer_end,
        want["purge_addresses"],
        prefix="peer.",
    )
    return plan, tracker


def create_pair(nss, action, rollback):
    """Create the pair: ``name`` in its namespace, the peer directly inside its own namespace
    under a temporary name, then renamed there and tagged."""
    ns = nss.get(action["netns"], "netns")
    pns = nss.get(action["peer_netns"], "peer_netns")
    tmp = temp_ifname("tnv")
    create_link(ns, rollback, action["ifname"], "veth", peer={"ifname": tmp, "net_ns_fd": pns.fd})
    msg = find_link(pns, tmp)
    if msg is None:
        raise ModuleFailure(f"the new peer '{tmp}' did not appear in {pns.label}")
    set_link(pns, msg["index"], tmp, ifname=action["peer"])
    set_link(pns, msg["index"], action["peer"], ifalias=OWNER_TAG)


def apply(nss, plan):
    """Execute the plan; on failure undo what this call created."""
    rollback = Rollback()

    def step(action):
        if action["op"] == "veth_add":
            create_pair(nss, action, rollback)
        elif action["op"] == "link_del":
            ns = nss.get(action["netns"], "netns")
            msg = find_link(ns, action["ifname"])
            if msg is not None:
                delete_link(ns, msg["index"], action["ifname"])
        else:
            apply_link_action(nss, action, rollback)

    apply_plan(plan, step, rollback)


def run(module):
    want = build_want(module.params)
    with NetnsSet() as nss:
        ns = nss.get(want["netns"], "netns")
        pns = nss.get(want["peer_netns"], "peer_netns") if want["peer"] else ns
        check_master(nss, want)
        have = read_have(nss, want)
        plan, tracker = build_plan(want, have, (ns.label, pns.label))
        if plan and not module.check_mode:
            apply(nss, plan)
        interface = read_link(ns, want["name"])
        peer = read_link(pns, want["peer"]) if want["peer"] else None
        if module.check_mode and plan:
            interface, peer = have["end"], have["peer_end"]
        return build_result(module, plan, tracker, interface=interface, peer=peer)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    require_pyroute2(module)
    run_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
