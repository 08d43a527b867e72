#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
---
module: tenant_network
short_description: Converge the network plumbing of many tenants in one call
version_added: "0.1.0"
description:
  - Takes the whole tenant list of a host (the schema of the C(tenant_network) role) and, for
    every tenant, converges its named network namespace, its attachment (veth into a host
    bridge, or a macvlan on an 802.1Q subinterface of a trunk NIC, or an existing namespace
    such as a Docker container's), the addresses of the tenant-side interface and the static
    routes of the namespace.
  - One call handles hundreds of tenants, so a no-op run costs one netlink socket per
    namespace instead of one module run per object. It reuses the collection's netlink layer
    (the same code as M(tenantnet.nsproxy.veth), M(tenantnet.nsproxy.macvlan_vlan) and
    M(tenantnet.nsproxy.netns_route)).
  - Every tenant is validated before anything is touched. Links this module creates carry the
    collection's interface alias, and it never changes or deletes links it did not create.
  - Tenants with O(tenants[].state=absent) are removed cleanly, their links first and then the
    namespace name. Tenants left out of the list are not touched.
  - Namespaces of C(container) tenants are attached by M(tenantnet.nsproxy.netns) beforehand
    (the role does this); this module only manages addresses and routes inside them.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 >= 0.7 on the target (not needed with O(validate_only=true))
attributes:
  check_mode:
    description: Computes the same per-tenant plan as a real run, reports it, and changes nothing.
    support: full
  diff_mode:
    description: Shows, per changed tenant, whether it existed before and the actions taken.
    support: full
options:
  tenants:
    description:
      - The tenants, in the schema of the C(tenant_network) role.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the network namespace (under O(netns_dir)), 1-12 characters from
            C([a-z0-9-]), starting with a letter or digit, so derived link names fit in 15.
        type: str
        required: true
      state:
        description:
          - V(present) converges the tenant, V(absent) removes its links and its namespace
            name.
        type: str
        choices: [present, absent]
        default: present
      attachment:
        description:
          - How the tenant namespace reaches its network.
        type: dict
        required: true
        suboptions:
          type:
            description:
              - V(bridge) creates a veth pair whose host end is enslaved to
                O(tenants[].attachment.bridge).
              - V(vlan) creates the subinterface C(<parent>.<vlan_id>) and a macvlan on it inside
                the namespace.
              - V(container) uses the namespace of an existing Docker container (attached by name
                beforehand); no link is created.
            type: str
            choices: [bridge, vlan, container]
            required: true
          bridge:
            description:
              - Host bridge for V(bridge); created (STP off, up) when missing.
            type: str
          host_interface:
            description:
              - Name of the host end of the veth (V(bridge), and the VLAN fallback). Default
                C(tn-<name>).
            type: str
          parent:
            description:
              - Trunk NIC for V(vlan).
            type: str
          vlan_id:
            description:
              - 802.1Q VLAN id for V(vlan), 1-4094.
            type: int
          mode:
            description:
              - macvlan mode for V(vlan). The kernel's own default is VEPA; bridge is what Docker
                and CNI use.
            type: str
            choices: [bridge, private, vepa, passthru]
            default: bridge
          mac:
            description:
              - MAC address of the tenant-side interface.
            type: str
          container:
            description:
              - Docker container name or id for V(container) (informational here; the role
                attaches it with M(tenantnet.nsproxy.netns)).
            type: str
      interface:
        description:
          - Name of the tenant-side interface inside the namespace.
        type: str
        default: eth0
      mtu:
        description:
          - MTU of the tenant-side interface (and of the host veth end).
        type: int
      addresses:
        description:
          - Addresses (CIDR) of the tenant-side interface. For links this module owns the list
            is exact; in a container namespace missing ones are only added.
        type: list
        elements: str
        default: []
      routes:
        description:
          - Static routes of the namespace (main table), in the form of
            M(tenantnet.nsproxy.netns_route). The set is exact (static and boot routes not listed
            are removed; kernel and link routes never are), except in a container's namespace,
            where routes are only added.
        type: list
        elements: dict
        default: []
      proxy:
        description:
          - The tenant's nsproxy part (listeners, routes, upstreams). Ignored here; the
            C(nsproxy) role reads it.
        type: dict
  vlan_fallback:
    description:
      - What to do with V(vlan) tenants when the kernel has no 802.1Q support.
      - V(fail) stops before anything changes, naming the tenants.
      - V(veth) attaches them with a veth into a host bridge C(tnvlan<vlan_id>) that stands in
        for the VLAN, and says so in a warning. For sandboxes and test kernels.
    type: str
    choices: [fail, veth]
    default: fail
  netns_dir:
    description:
      - Directory of the namespace names.
    type: path
    default: /run/netns
  validate_only:
    description:
      - Only validate O(tenants) (no kernel access, pyroute2 not needed) and report problems.
    type: bool
    default: false
notes:
  - A namespace name that is removed while a process still uses the namespace leaves that
    namespace alive; its links then live on with it. The module deletes the links it owns
    first, so nothing of the tenant stays on the host.
  - Bridges and VLAN subinterfaces are shared infrastructure and are not removed with a tenant.
"""

EXAMPLES = r"""
- name: Converge every tenant of this host in one call
  tenantnet.nsproxy.tenant_network:
    tenants:
      - name: acme
        attachment: {type: vlan, parent: eth1, vlan_id: 101}
        addresses: [10.0.0.250/24]
        routes:
          - {dst: default, gateway: 10.0.0.254}
          - {dst: 10.0.0.0/8, gateway: 10.0.0.1}
      - name: globex
        attachment: {type: bridge, bridge: br-tenants}
        addresses: [10.0.0.250/24]
        routes:
          - {dst: default, gateway: 10.0.0.254}
      - name: initech
        state: absent
        attachment: {type: bridge, bridge: br-tenants}

- name: Check tenant data only (no kernel access)
  tenantnet.nsproxy.tenant_network:
    tenants: "{{ tenant_network_tenants }}"
    validate_only: true
"""

RETURN = r"""
tenants:
  description: Per tenant that changed (or would change in check mode), the actions taken.
  returned: always
  type: dict
  sample:
    acme:
      state: present
      actions: ["create netns acme", "add 10.0.0.250/24 to eth0"]
summary:
  description: Counts of tenants seen, changed, created and removed.
  returned: always
  type: dict
  sample: {"tenants": 200, "changed": 0, "created": 0, "removed": 0}
fallback:
  description: Tenants attached by veth because the kernel has no 802.1Q support.
  returned: always
  type: list
  elements: str
  sample: ["acme"]
bridges:
  description:
    - Host bridges the present tenants hang on (their own C(bridge), or C(tnvlan<vlan_id>) for
      VLAN tenants on the veth fallback). The tenant_network role lets traffic between the ports
      of each through the host firewall.
  returned: unless validate_only
  type: list
  elements: str
  sample: ["br-tenants"]
vlan_supported:
  description: Whether the kernel supports 802.1Q VLANs (null when no VLAN tenant was present).
  returned: unless validate_only
  type: bool
"""

import errno
import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    NETNS_DIR,
    OWNER_TAG,
    ModuleFailure,
    ParamError,
    Rollback,
    addresses_after,
    normalize_cidrs,
    normalize_mac,
    plan_addresses,
    validate_ifname,
    validate_int_range,
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    IFF_UP,
    add_address,
    create_link,
    create_named_netns,
    delete_link,
    find_link,
    is_netns_file,
    link_kind,
    link_kind_data,
    open_netns,
    read_addresses,
    remove_address,
    remove_named_netns,
    require_pyroute2,
    set_link,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    RouteSpecError,
    action_text,
    apply_route_action,
    check_routes_against_namespace,
    normalize_route_specs,
    plan_routes,
    read_routes,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
FALLBACK_BRIDGE = "tnvlan%d"
MAIN_TABLE = 254

ATTACHMENT_SPEC = dict(
    type=dict(type="str", required=True, choices=["bridge", "vlan", "container"]),
    bridge=dict(type="str"),
    host_interface=dict(type="str"),
    parent=dict(type="str"),
    vlan_id=dict(type="int"),
    mode=dict(type="str", default="bridge", choices=["bridge", "private", "vepa", "passthru"]),
    mac=dict(type="str"),
    container=dict(type="str"),
)

TENANT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    attachment=dict(type="dict", required=True, options=ATTACHMENT_SPEC),
    interface=dict(type="str", default="eth0"),
    mtu=dict(type="int"),
    addresses=dict(type="list", elements="str", default=[]),
    routes=dict(type="list", elements="dict", default=[]),
    proxy=dict(type="dict"),
)

ARGUMENT_SPEC = dict(
    tenants=dict(type="list", elements="dict", required=True, options=TENANT_SPEC),
    vlan_fallback=dict(type="str", default="fail", choices=["fail", "veth"]),
    netns_dir=dict(type="path", default=NETNS_DIR),
    validate_only=dict(type="bool", default=False),
)


# -- want ------------------------------------------------------------------------------------


class Tenant:
    """One tenant, validated and normalised (the *want*)."""

    def __init__(self, raw, index):
        self.index = index
        self.name = raw["name"]
        self.label = f"tenants[{index}]"
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ParamError(
                self.label + ".name",
                f"'{self.name}' is not allowed; use 1-12 characters from a-z, 0-9 and '-', "
                "starting with a letter or digit (derived link names must fit in 15)",
            )
        self.label = f"tenants[{index}] ({self.name})"
        self.state = raw["state"]
        att = raw["attachment"]
        self.kind = att["type"]
        self.interface = validate_ifname(raw["interface"], self.field("interface"))
        self.host_interface = validate_ifname(
            att.get("host_interface") or "tn-" + self.name, self.field("attachment.host_interface")
        )
        self.mode = att.get("mode") or "bridge"
        self.mac = normalize_mac(att.get("mac"), self.field("attachment.mac"))
        self.mtu = validate_mtu(raw.get("mtu"), self.field("mtu"))
        self.bridge = None
        self.parent = None
        self.vlan_id = None
        self.container = att.get("container")
        if self.kind == "bridge":
            self.bridge = validate_ifname(
                self._required(att, "bridge", "the host bridge the veth joins"),
                self.field("attachment.bridge"),
            )
        elif self.kind == "vlan":
            self.parent = validate_ifname(
                self._required(att, "parent", "the trunk NIC"), self.field("attachment.parent")
            )
            self.vlan_id = validate_int_range(
                self._required(att, "vlan_id", "an 802.1Q id 1-4094"),
                self.field("attachment.vlan_id"),
                1,
                4094,
            )
            validate_ifname(self.subinterface, self.field("attachment.parent") + " + vlan_id")
        else:
            self._required(att, "container", "the Docker container name or id")
        self.addresses = normalize_cidrs(raw.get("addresses") or [], self.field("addresses"))
        try:
            self.routes = normalize_route_specs(raw.get("routes") or [])
            if self.kind != "container" and self.state == "present":
                # Pure check: every gateway must be reachable from the tenant's own addresses.
                check_routes_against_namespace(
                    self.routes,
                    [self.interface, "lo"],
                    [(self.interface, cidr) for cidr in self.addresses],
                    [],
                    f"tenant {self.name}",
                )
        except RouteSpecError as exc:
            raise ModuleFailure(f"{self.label}.{exc}") from None

    @property
    def subinterface(self):
        return f"{self.parent}.{self.vlan_id}"

    def field(self, name):
        return f"{self.label}.{name}"

    def _required(self, att, key, what):
        if att.get(key) in (None, ""):
            raise ParamError(
                self.field("attachment." + key),
                f"required for attachment type {self.kind} ({what})",
            )
        return att[key]


def build_tenants(raw_tenants):
    """Validate every tenant before anything is touched; returns the list of Tenant."""
    tenants = []
    names = {}
    host_ends = {}
    for index, raw in enumerate(raw_tenants):
        try:
            tenant = Tenant(raw, index)
        except ParamError as exc:
            raise ModuleFailure(exc.msg) from None
        if tenant.name in names:
            raise ModuleFailure(
                f"{tenant.label}.name: '{tenant.name}' is already used by "
                f"tenants[{names[tenant.name]}]; tenant names must be unique"
            )
        names[tenant.name] = index
        if tenant.kind != "container":
            if tenant.host_interface in host_ends:
                raise ModuleFailure(
                    f"{tenant.label}.attachment.host_interface: '{tenant.host_interface}' is "
                    f"already used by tenants[{host_ends[tenant.host_interface]}]"
                )
            host_ends[tenant.host_interface] = index
        tenants.append(tenant)
    return tenants


# -- have / plan / apply -----------------------------------------------------------------------


def vlan_supported(module):
    """True if the kernel has 802.1Q support (loaded as module 8021q or built in)."""
    if os.path.exists("/proc/net/vlan/config"):
        return True
    modprobe = module.get_bin_path("modprobe")
    if modprobe:
        module.run_command([modprobe, "-q", "8021q"])
    return os.path.exists("/proc/net/vlan/config")


class Converger:
    """Converges tenants one by one against the host namespace. ``actions`` collects the
    per-tenant plan (texts); in check mode nothing is applied."""

    def __init__(self, module, netns_dir, fallback_vlan):
        self.module = module
        self.check = module.check_mode
        self.netns_dir = netns_dir
        self.fallback_vlan = fallback_vlan
        self.host = open_netns(None)
        self.bridges_ready = {}  # name -> ifindex, checked once per run
        self.subifs_ready = set()

    def close(self):
        self.host.close()

    # -- helpers
    def _owned(self, msg):
        return msg is not None and msg.get_attr("IFLA_IFALIAS") == OWNER_TAG

    def _refuse_foreign(self, tenant, ns, msg, name, where):
        if msg is not None and not self._owned(msg):
            raise ModuleFailure(
                "{}: interface '{}' already exists in {} and was not created by {}; it is left "
                "alone. Rename it, or choose another {}".format(
                    tenant.label,
                    name,
                    where,
                    OWNER_TAG,
                    "interface" if ns is not self.host else "attachment.host_interface",
                )
            )

    def _ensure_up(self, ns, msg, name, actions, what):
        if not msg["flags"] & IFF_UP:
            actions.append(f"set {what} {name} up")
            if not self.check:
                set_link(ns, msg["index"], name, state="up")

    # -- host side infrastructure
    def ensure_bridge(self, tenant, name, actions, rollback):
        """The host bridge exists (created STP-off and up when missing); returns its index
        (None in check mode when it is still to be created). Checked once per run."""
        if name in self.bridges_ready:
            return self.bridges_ready[name]
        msg = find_link(self.host, name)
        if msg is not None and link_kind(msg) != "bridge":
            raise ModuleFailure(
                "{}: host interface '{}' exists but is a {}, not a bridge".format(
                    tenant.label, name, link_kind(msg) or "plain device"
                )
            )
        if msg is None:
            actions.append(f"create bridge {name}")
            index = None
            if not self.check:
                index = create_link(self.host, rollback, name, "bridge", br_stp_state=0)
                set_link(self.host, index, name, state="up")
            self.bridges_ready[name] = index
            return index
        if self._owned(msg):
            self._ensure_up(self.host, msg, name, actions, "bridge")
        self.bridges_ready[name] = msg["index"]
        return msg["index"]

    def ensure_subinterface(self, tenant, actions, rollback):
        """``<parent>.<vlan_id>`` exists on the trunk NIC (created when missing)."""
        name = tenant.subinterface
        parent = find_link(self.host, tenant.parent)
        if parent is None:
            raise ModuleFailure(
                f"{tenant.label}.attachment.parent: trunk NIC '{tenant.parent}' does not "
                "exist on this host"
            )
        msg = find_link(self.host, name)
        if msg is not None:
            data = link_kind_data(msg)
            if link_kind(msg) != "vlan" or data.get("id") != tenant.vlan_id:
                raise ModuleFailure(
                    f"{tenant.label}: host interface '{name}' exists but is not VLAN "
                    f"{tenant.vlan_id} on {tenant.parent} (kind {link_kind(msg)}, "
                    f"id {data.get('id')})"
                )
            if msg.get_attr("IFLA_LINK") != parent["index"]:
                raise ModuleFailure(
                    f"{tenant.label}: host interface '{name}' is a VLAN on another parent "
                    f"than '{tenant.parent}'"
                )
            if name not in self.subifs_ready and self._owned(msg):
                self._ensure_up(self.host, msg, name, actions, "subinterface")
            self.subifs_ready.add(name)
            return msg["index"]
        if self.check and name in self.subifs_ready:
            return None  # planned by an earlier tenant of this check-mode run
        actions.append(f"create VLAN subinterface {name}")
        self.subifs_ready.add(name)
        if self.check:
            return None
        index = create_link(
            self.host, rollback, name, "vlan", link=parent["index"], vlan_id=tenant.vlan_id
        )
        set_link(self.host, index, name, state="up")
        return index

    # -- one tenant
    def converge(self, tenant):
        """Bring one present tenant to its wanted state; returns the list of action texts."""
        actions = []
        rollback = Rollback()
        path = os.path.join(self.netns_dir, tenant.name)
        try:
            if tenant.kind == "container":
                if not is_netns_file(path):
                    raise ModuleFailure(
                        f"{tenant.label}: namespace name '{path}' is not attached to container "
                        f"'{tenant.container}'; attach it first with tenantnet.nsproxy.netns"
                    )
            elif not is_netns_file(path):
                actions.append(f"create netns {tenant.name}")
                if self.check:
                    self._plan_new(tenant, actions)
                    return actions
                if os.path.lexists(path):
                    remove_named_netns(path)  # a stale leftover file, no namespace behind it
                create_named_netns(path)
                rollback.push(f"creating netns {tenant.name}", lambda: remove_named_netns(path))
            with open_netns(path, tenant.field("name")) as ns:
                lo = find_link(ns, "lo")
                if lo is not None:
                    self._ensure_up(ns, lo, "lo", actions, "loopback")
                link = self._converge_link(tenant, ns, actions, rollback)
                self._converge_addresses(tenant, ns, link, actions)
                self._converge_routes(tenant, ns, actions)
        except ModuleFailure as failure:
            leftovers = rollback.unwind()
            msg = failure.msg
            if leftovers:
                msg += " Cleanup was incomplete: " + "; ".join(leftovers)
            raise ModuleFailure(msg, tenant=tenant.name, **failure.extra) from None
        rollback.clear()
        return actions

    def _plan_new(self, tenant, actions):
        """Check mode for a namespace that does not exist yet: everything is to be created."""
        if tenant.kind == "vlan" and not self.fallback_vlan:
            self.ensure_subinterface(tenant, actions, None)
            actions.append(f"create macvlan {tenant.interface} in {tenant.name}")
        else:
            self.ensure_bridge(tenant, self._bridge_of(tenant), actions, None)
            actions.append(
                f"create veth {tenant.host_interface} <-> {tenant.name}/{tenant.interface}"
            )
        for cidr in tenant.addresses:
            actions.append(f"add {cidr} to {tenant.interface}")
        for route in tenant.routes:
            actions.append("replace route {}".format(route["dst"]))

    def _bridge_of(self, tenant):
        if tenant.kind == "vlan":
            return FALLBACK_BRIDGE % tenant.vlan_id
        return tenant.bridge

    def _converge_link(self, tenant, ns, actions, rollback):
        """The tenant-side interface, created or checked; returns its link message or None
        (check mode, not yet created)."""
        msg = find_link(ns, tenant.interface)
        if tenant.kind == "container":
            if msg is None:
                raise ModuleFailure(
                    f"{tenant.label}.interface: '{tenant.interface}' does not exist in the "
                    f"namespace of container '{tenant.container}'"
                )
            return msg
        self._refuse_foreign(tenant, ns, msg, tenant.interface, f"netns '{tenant.name}'")
        use_veth = tenant.kind == "bridge" or self.fallback_vlan
        host_msg = find_link(self.host, tenant.host_interface) if use_veth else None
        if use_veth:
            self._refuse_foreign(tenant, self.host, host_msg, tenant.host_interface, "the host")
            bridge_index = self.ensure_bridge(tenant, self._bridge_of(tenant), actions, rollback)
            if msg is not None and not (
                link_kind(msg) == "veth"
                and host_msg is not None
                and link_kind(host_msg) == "veth"
                and msg.get_attr("IFLA_LINK") == host_msg["index"]
            ):
                msg = self._recreate(tenant, ns, msg, host_msg, actions)
                host_msg = None
            elif msg is None and host_msg is not None:
                # A host end without its tenant end: the namespace was recreated meanwhile.
                actions.append(f"delete orphaned {tenant.host_interface}")
                if not self.check:
                    delete_link(self.host, host_msg["index"], tenant.host_interface)
                host_msg = None
            if msg is None:
                actions.append(
                    f"create veth {tenant.host_interface} <-> {tenant.name}/{tenant.interface}"
                )
                if self.check:
                    return None
                peer = {"ifname": tenant.interface, "net_ns_fd": ns.fd}
                if tenant.mac:
                    peer["address"] = tenant.mac
                if tenant.mtu:
                    peer["mtu"] = tenant.mtu
                extra = {"mtu": tenant.mtu} if tenant.mtu else {}
                index = create_link(
                    self.host, rollback, tenant.host_interface, "veth", peer=peer, **extra
                )
                set_link(self.host, index, tenant.host_interface, master=bridge_index, state="up")
                msg = find_link(ns, tenant.interface)
                set_link(ns, msg["index"], tenant.interface, ifalias=OWNER_TAG, state="up")
                return find_link(ns, tenant.interface)
            self._converge_host_end(tenant, host_msg, bridge_index, actions)
        else:
            sub_index = self.ensure_subinterface(tenant, actions, rollback)
            if msg is not None and not (
                link_kind(msg) == "macvlan"
                and sub_index is not None
                and msg.get_attr("IFLA_LINK") == sub_index
            ):
                msg = self._recreate(tenant, ns, msg, None, actions)
            if msg is None:
                actions.append(f"create macvlan {tenant.interface} in {tenant.name}")
                if self.check:
                    return None
                attrs = {"link": sub_index, "macvlan_mode": tenant.mode}
                if tenant.mac:
                    attrs["address"] = tenant.mac
                if tenant.mtu:
                    attrs["mtu"] = tenant.mtu
                # Created directly inside the tenant namespace: nothing appears on the host.
                index = create_link(
                    self.host, rollback, tenant.interface, "macvlan", target=ns, **attrs
                )
                set_link(ns, index, tenant.interface, state="up")
                return find_link(ns, tenant.interface)
            mode = link_kind_data(msg).get("mode")
            mode = MACVLAN_MODES.get(mode, mode)
            if mode != tenant.mode:
                actions.append(f"set macvlan mode {mode} -> {tenant.mode}")
                if not self.check:
                    set_link(
                        ns, msg["index"], tenant.interface, kind="macvlan", macvlan_mode=tenant.mode
                    )
        return self._converge_attrs(tenant, ns, msg, actions)

    def _recreate(self, tenant, ns, msg, host_msg, actions):
        """Our tenant-side link has another kind or peer than wanted: delete it (it is ours)."""
        actions.append(f"recreate {tenant.interface} in {tenant.name} (was a {link_kind(msg)})")
        if not self.check:
            delete_link(ns, msg["index"], tenant.interface)
            if host_msg is not None:
                delete_link(self.host, host_msg["index"], tenant.host_interface)
        return None

    def _converge_host_end(self, tenant, host_msg, bridge_index, actions):
        if host_msg is None:
            return
        if bridge_index is not None and host_msg.get_attr("IFLA_MASTER") != bridge_index:
            actions.append(f"enslave {tenant.host_interface} to {self._bridge_of(tenant)}")
            if not self.check:
                set_link(self.host, host_msg["index"], tenant.host_interface, master=bridge_index)
        if tenant.mtu and host_msg.get_attr("IFLA_MTU") != tenant.mtu:
            actions.append(f"set mtu {tenant.mtu} on {tenant.host_interface}")
            if not self.check:
                set_link(self.host, host_msg["index"], tenant.host_interface, mtu=tenant.mtu)
        self._ensure_up(self.host, host_msg, tenant.host_interface, actions, "host end")

    def _converge_attrs(self, tenant, ns, msg, actions):
        changes = {}
        if tenant.mtu and msg.get_attr("IFLA_MTU") != tenant.mtu:
            changes["mtu"] = tenant.mtu
        mac = (msg.get_attr("IFLA_ADDRESS") or "").lower()
        if tenant.mac and mac != tenant.mac:
            changes["address"] = tenant.mac
        if changes:
            actions.append(
                "set {} on {}".format(
                    ", ".join(f"{key}={value}" for key, value in sorted(changes.items())),
                    tenant.interface,
                )
            )
            if not self.check:
                set_link(ns, msg["index"], tenant.interface, **changes)
        self._ensure_up(ns, msg, tenant.interface, actions, "interface")
        return msg

    def _converge_addresses(self, tenant, ns, msg, actions):
        if msg is None:
            for cidr in tenant.addresses:
                actions.append(f"add {cidr} to {tenant.interface}")
            return
        have = read_addresses(ns, msg["index"])
        purge = tenant.kind != "container"
        to_add, to_remove = plan_addresses(tenant.addresses, have, purge)
        for cidr in to_remove:
            actions.append(f"remove {cidr} from {tenant.interface}")
            if not self.check:
                remove_address(ns, msg["index"], tenant.interface, cidr)
        for cidr in to_add:
            actions.append(f"add {cidr} to {tenant.interface}")
            if not self.check:
                add_address(ns, msg["index"], tenant.interface, cidr)
        tenant.addresses_after = addresses_after(tenant.addresses, have, purge)

    def _converge_routes(self, tenant, ns, actions):
        links = ns.call("listing interfaces", ns.ipr.get_links)
        by_index = dict((m["index"], m.get_attr("IFLA_IFNAME")) for m in links)
        by_name = dict((name, index) for index, name in by_index.items())
        if self.check and tenant.interface not in by_name:
            for route in tenant.routes:
                actions.append("replace route {}".format(route["dst"]))
            return
        have = ns.call("reading routes", read_routes, ns.ipr, by_index, tables={MAIN_TABLE})
        # Routes only make sense once the addresses are there; in check mode they may not be.
        if self.check and tenant.kind != "container":
            have_connected = [r for r in have if r["gateway"] is None]
            if not have_connected and tenant.addresses:
                for route in tenant.routes:
                    actions.append("replace route {}".format(route["dst"]))
                return
        # In a container's namespace Docker's own routes (proto boot) must survive: add only.
        plan = plan_routes(tenant.routes, have, state="present", purge=tenant.kind != "container")
        for action in plan:
            actions.append(action_text(action))
            if not self.check:
                ns.call(
                    "applying route {}".format(action["route"]["dst"]),
                    apply_route_action,
                    ns.ipr,
                    action,
                    by_name,
                )

    # -- removal
    def remove(self, tenant):
        """Remove an absent tenant: its links (ours only), then the namespace name."""
        actions = []
        path = os.path.join(self.netns_dir, tenant.name)
        if is_netns_file(path):
            if tenant.kind != "container":
                with open_netns(path, tenant.field("name")) as ns:
                    for msg in ns.call("listing interfaces", ns.ipr.get_links):
                        if self._owned(msg):
                            name = msg.get_attr("IFLA_IFNAME")
                            actions.append(f"delete {name} in {tenant.name}")
                            if not self.check:
                                delete_link(ns, msg["index"], name)
            actions.append(f"remove netns name {tenant.name}")
            if not self.check:
                remove_named_netns(path)
        elif os.path.lexists(path):
            actions.append(f"remove stale netns file {path}")
            if not self.check:
                remove_named_netns(path)
        if tenant.kind != "container":
            host_msg = find_link(self.host, tenant.host_interface)
            if self._owned(host_msg):
                actions.append(f"delete {tenant.host_interface}")
                if not self.check:
                    try:
                        delete_link(self.host, host_msg["index"], tenant.host_interface)
                    except ModuleFailure as exc:
                        if exc.extra.get("errno") != errno.ENODEV:
                            raise
        return actions


def run(module):
    params = module.params
    tenants = build_tenants(params["tenants"])
    result = dict(changed=False, tenants={}, fallback=[])
    vlan_present = [t.name for t in tenants if t.kind == "vlan" and t.state == "present"]
    if params["validate_only"]:
        result["summary"] = dict(tenants=len(tenants), changed=0, created=0, removed=0)
        return result
    require_pyroute2(module)
    fallback = False
    result["vlan_supported"] = None
    if vlan_present:
        result["vlan_supported"] = vlan_supported(module)
        if not result["vlan_supported"]:
            if params["vlan_fallback"] != "veth":
                raise ModuleFailure(
                    "this kernel has no 802.1Q VLAN support (module 8021q missing, no "
                    "/proc/net/vlan), which VLAN tenants {} need; nothing was changed. Use a "
                    "kernel with CONFIG_VLAN_8021Q, or set vlan_fallback: veth to attach them "
                    "by veth for tests".format(", ".join(vlan_present))
                )
            fallback = True
            result["fallback"] = vlan_present
            module.warn(
                "this kernel has no 802.1Q VLAN support: VLAN tenants {} are attached by veth "
                "into host bridges tnvlan<vlan_id> instead of macvlan on "
                "<parent>.<vlan_id>".format(", ".join(vlan_present))
            )
    converger = Converger(module, params["netns_dir"], fallback)
    created = removed = 0
    before = {}
    after = {}
    try:
        for tenant in tenants:
            path = os.path.join(params["netns_dir"], tenant.name)
            existed = is_netns_file(path)
            if tenant.state == "present":
                actions = converger.converge(tenant)
                created += int(bool(actions) and not existed)
            else:
                actions = converger.remove(tenant)
                removed += int(bool(actions))
            if actions:
                result["tenants"][tenant.name] = dict(state=tenant.state, actions=actions)
                before[tenant.name] = "present" if existed else "absent"
                after[tenant.name] = actions
    finally:
        converger.close()
    result["changed"] = bool(result["tenants"])
    result["bridges"] = sorted(
        {
            converger._bridge_of(t)
            for t in tenants
            if t.state == "present" and (t.kind == "bridge" or (t.kind == "vlan" and fallback))
        }
    )
    result["summary"] = dict(
        tenants=len(tenants), changed=len(result["tenants"]), created=created, removed=removed
    )
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run(module)
    except ModuleFailure as failure:
        module.fail_json(msg=failure.msg, **failure.extra)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
