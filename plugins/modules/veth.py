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
      - Name of the first end, in O(netns). At most 15 bytes (15 ASCII characters); no C(/),
        C(:), C(%) or whitespace.
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
      - Name of the other end, in O(peer_netns). At most 15 bytes; no C(/), C(:), C(%) or
        whitespace.
      - Required when O(state=present).
    type: str
  peer_netns:
    description:
      - Namespace of O(peer), same forms as O(netns). Omitted means the host namespace.
    type: str
  state:
    description:
      - V(present) creates or reconciles the pair, V(absent) deletes it (both ends go together).
      - With V(absent), a namespace (O(netns) or O(peer_netns)) that no longer exists is not an
        error (its end went with it); the other end is deleted if it is still there.
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
        never touched, and listing one (C(fe80::/10)) is refused.
      - One IPv6 address listed with two prefix lengths is refused. An IPv6 address the link
        holds with another prefix length than the listed one is replaced (removed, then added).
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
extends_documentation_fragment: [tenantnet.nsproxy.attributes, tenantnet.nsproxy.attributes.netlink]
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

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ParamError
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsMissing,
    read_link,
    veth_paired,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    netns_path,
    normalize_link_addresses,
    normalize_mac,
    validate_ifname,
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.veth import plan_veth

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


def _namespace(ctx, want, spec, field):
    """The namespace of one end. For state=absent a namespace that is gone means that end is
    gone too (a tenant torn down first): None instead of a failure."""
    try:
        return ctx.netns(spec, field)
    except NetnsMissing:
        if want["state"] == "absent":
            return None
        raise


def _label(ns, spec):
    return ns.label if ns is not None else f"netns '{spec}' (gone)"


def read_have(ctx, want):
    """Both ends (``describe_link`` dicts or None), whether they are paired, and the labels of
    their namespaces. The bridge named in ``master`` must exist in ``netns`` and be a bridge
    (in check mode a missing one is a warning: an earlier task may create it). With
    state=absent a namespace that is gone reads as holding no end."""
    ns = _namespace(ctx, want, want["netns"], "netns")
    pns = _namespace(ctx, want, want["peer_netns"], "peer_netns") if want["peer"] else ns
    master = want["end"]["master"]
    if master and want["state"] == "present":
        link = read_link(ns, master)
        if link is None:
            ctx.missing("master", f"bridge '{master}' does not exist in {ns.label}")
        elif link["kind"] != "bridge":
            problem = f"'{master}' in {ns.label} is a {link['kind']}, not a bridge"
            raise ParamError("master", problem)
    end = read_link(ns, want["name"]) if ns is not None else None
    peer_end = read_link(pns, want["peer"]) if want["peer"] and pns is not None else None
    paired = bool(want["peer"]) and None not in (ns, pns)
    return dict(
        end=end,
        peer_end=peer_end,
        paired=paired and veth_paired(ns, end, pns, peer_end),
        labels=(_label(ns, want["netns"]), _label(pns, want["peer_netns"])),
    )


def build_plan(want, have, labels):
    """want + have -> (plan, tracker). Pure: no netlink calls, same result in check mode."""
    plan, tracker = Plan(), DiffTracker()
    plan_veth(plan, tracker, want, have, labels)
    return plan, tracker


def read_result(ctx, want, have, plan):
    """Both ends after the call (before it, in check mode)."""
    if ctx.check_mode:
        return dict(interface=have["end"], peer=have["peer_end"])
    ns = _namespace(ctx, want, want["netns"], "netns")
    pns = _namespace(ctx, want, want["peer_netns"], "peer_netns") if want["peer"] else ns
    return dict(
        interface=read_link(ns, want["name"]) if ns is not None else None,
        peer=read_link(pns, want["peer"]) if want["peer"] and pns is not None else None,
    )


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(
        module,
        want=build_want,
        have=read_have,
        plan=lambda want, have: build_plan(want, have, have["labels"]),
        result=read_result,
    )


if __name__ == "__main__":
    main()
