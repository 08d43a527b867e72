#!/usr/bin/python
# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

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
    namespace instead of one module run per object. It is a composition of the collection's
    planners; its plan is made of the same actions as M(tenantnet.nsproxy.netns),
    M(tenantnet.nsproxy.bridge), M(tenantnet.nsproxy.veth), M(tenantnet.nsproxy.macvlan_vlan)
    and M(tenantnet.nsproxy.netns_route) would make, carried out by the same code.
  - Every tenant is validated and the whole plan is made before anything is touched. Links
    this module creates carry the interface alias C(tenantnet.nsproxy tenant=<name>), and it
    never changes or deletes links it did not create.
  - If a tenant fails half-way, what the call did for that tenant is undone. The links and the
    namespace it created are removed, addresses it removed are added again, and routes it
    replaced or deleted are put back as they were. Tenants before it stay applied.
  - Tenants with O(tenants[].state=absent) are removed cleanly, their links first and then the
    namespace name. Tenants left out of the list are not touched, unless O(exclusive=true).
  - Namespaces of C(container) tenants are attached by M(tenantnet.nsproxy.netns) beforehand
    (the role does this); this module only manages addresses and routes inside them.
author:
  - tenantnet developers (@tenantnet)
requirements:
  - pyroute2 >= 0.7 on the target (not needed with O(validate_only=true))
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
              - It must differ from every name another tenant of the call uses on the host (its
                host end, bridge, trunk NIC, C(<parent>.<vlan_id>), C(tnvlan<vlan_id>)) and from
                the tenant's own bridge; such a list is refused before anything is touched. An
                existing host link of that name that is not a veth is never deleted.
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
          - IPv6 link-local addresses (C(fe80::/10)) are refused (the kernel manages them), and
            so is one IPv6 address listed with two prefix lengths. An IPv6 address the
            interface holds with another prefix length is replaced.
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
  exclusive:
    description:
      - The list is the whole set of tenants of this host. A tenant that is not listed but
        left objects this module made (a namespace under O(netns_dir) holding a link tagged
        C(tenantnet.nsproxy tenant=<name>), host links with that tag) is removed like a tenant
        with O(tenants[].state=absent); these removals come first in the plan and in the diff.
      - Objects without the tag are never touched, namespaces of other tools included. The
        namespace name of a V(container) tenant carries no tag and is left alone.
    type: bool
    default: false
notes:
  - A namespace name that is removed while a process still uses the namespace leaves that
    namespace alive; its links then live on with it. The module deletes the links it owns
    first, so nothing of the tenant stays on the host.
  - Bridges and VLAN subinterfaces are shared infrastructure and are not removed with a tenant.
  - Links made by an earlier version carry the plain alias C(tenantnet.nsproxy); the first run
    re-tags them with their tenant (reported as a change once).
seealso:
  - module: tenantnet.nsproxy.netns
  - module: tenantnet.nsproxy.veth
  - module: tenantnet.nsproxy.macvlan_vlan
  - module: tenantnet.nsproxy.netns_route
extends_documentation_fragment: [tenantnet.nsproxy.attributes]
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
  description:
    - Per tenant that changed (or would change in check mode), the actions taken, as text.
      A tenant removed because it is no longer listed (O(exclusive)) has C(unlisted=true).
  returned: always
  type: dict
  sample:
    acme:
      state: present
      actions: ["create netns /run/netns/acme", "add 10.0.0.250/24 to eth0 in acme"]
actions:
  description: The whole plan, in order (also in check mode), as the single-object modules
    report theirs.
  returned: always
  type: list
  elements: dict
summary:
  description: Counts of tenants seen, changed, created and removed.
  returned: always
  type: dict
  sample: {"tenants": 200, "changed": 0, "created": 0, "removed": 0, "unlisted": 0}
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

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.addresses import (
    plan_address_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.bridge import plan_bridge
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.macvlan import plan_macvlan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.namespace import plan_namespace
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    lower_name,
    namespace_routes,
    namespace_state,
    read_links,
    veth_paired,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.ownership import (
    OWNER_TAG,
    tenant_of,
    tenant_tag,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import (
    DiffTracker,
    Plan,
    action_text,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    RouteSpecError,
    check_routes_against_namespace,
    normalize_route_specs,
    plan_route_changes,
    routes_surviving,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    NETNS_DIR,
    normalize_link_addresses,
    normalize_mac,
    refuse_control_characters,
    validate_ifname,
    validate_int_range,
    validate_mtu,
    validate_name,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.veth import plan_veth
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.vlan import plan_vlan

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,11}")
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
    exclusive=dict(type="bool", default=False),
)


# -- want ------------------------------------------------------------------------------------


class Tenant:
    """One tenant, validated and normalised (the *want*)."""

    def __init__(self, raw, index):
        self.index = index
        self.name = raw["name"]
        self.label = f"tenants[{index}]"
        validate_name(
            self.name,
            self.label + ".name",
            NAME_RE,
            "1-12 characters from a-z, 0-9 and '-', starting with a letter or digit "
            "(derived link names must fit in 15)",
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
            refuse_control_characters(self.container, self.field("attachment.container"))
        self.addresses = normalize_link_addresses(
            raw.get("addresses") or [], self.field("addresses")
        )
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


def host_objects(tenant):
    """The host interfaces a tenant creates or uses, as ``(name, what, field)``: its own veth
    end (``host_interface``, also the VLAN fallback's) and the shared objects its attachment
    needs (its bridge; a VLAN tenant's trunk NIC, ``<parent>.<vlan_id>`` and the fallback
    bridge ``tnvlan<vlan_id>``). A container tenant has none."""
    if tenant.kind == "container":
        return []
    objects = [(tenant.host_interface, "host end", "attachment.host_interface")]
    if tenant.kind == "bridge":
        objects.append((tenant.bridge, "bridge", "attachment.bridge"))
    else:
        objects += [
            (tenant.parent, "trunk NIC", "attachment.parent"),
            (tenant.subinterface, "VLAN subinterface", "attachment.parent + vlan_id"),
            (FALLBACK_BRIDGE % tenant.vlan_id, "VLAN fallback bridge", "attachment.vlan_id"),
        ]
    return objects


# Shared objects of different kinds cannot carry one name; a trunk NIC may be a bridge.
_SHAREABLE = {
    frozenset(pair)
    for pair in (
        ("bridge",),
        ("bridge", "VLAN fallback bridge"),
        ("VLAN fallback bridge",),
        ("VLAN subinterface",),
        ("trunk NIC",),
        ("trunk NIC", "bridge"),
        ("trunk NIC", "VLAN fallback bridge"),
    )
}


def refuse_shared_host_names(tenants):
    """Fail before anything is touched when a name on the host would be two things at once: a
    tenant's host end named like another tenant's (or its own) bridge, VLAN subinterface,
    fallback bridge, trunk NIC or host end, or a bridge named like a VLAN subinterface. Left
    through, one tenant's plan would delete or take over what another tenant uses."""
    claims = {}
    for tenant in tenants:
        for name, what, field in host_objects(tenant):
            for other, other_what, other_field in claims.get(name, []):
                _refuse_name_clash(name, (tenant, what, field), (other, other_what, other_field))
            claims.setdefault(name, []).append((tenant, what, field))


def _refuse_name_clash(name, claim, earlier):
    """Raise for one host name claimed twice, unless both claims are one shared object (two
    tenants on one bridge or VLAN). The field named is the host end's, else the later one."""
    what, other_what = claim[1], earlier[1]
    if frozenset((what, other_what)) in _SHAREABLE:
        return
    if what == "host end" and other_what == "host end":
        tenant, other = claim[0], earlier[0]
        raise ModuleFailure(
            f"{tenant.field('attachment.host_interface')}: '{name}' is already used by "
            f"tenants[{other.index}] ({other.name}) as its host end; each tenant needs its own"
        )
    if other_what == "host end":
        claim, earlier = earlier, claim
    tenant, what, field = claim
    other, other_what, other_field = earlier
    whose = "its own" if other is tenant else f"tenants[{other.index}] ({other.name})'s"
    raise ModuleFailure(
        f"{tenant.field(field)}: '{name}' is {whose} {other_what} ({other_field}); it cannot "
        f"also be the {what} of {tenant.label}, or one would destroy the other. Choose another "
        "name"
    )


def build_tenants(raw_tenants):
    """Validate every tenant before anything is touched; returns the list of Tenant."""
    tenants = []
    names = {}
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
        tenants.append(tenant)
    refuse_shared_host_names(tenants)
    return tenants


def build_want(params):
    """The validated tenants and the module's settings."""
    return dict(
        tenants=build_tenants(params["tenants"]),
        vlan_fallback=params["vlan_fallback"],
        netns_dir=params["netns_dir"],
        validate_only=params["validate_only"],
        exclusive=params["exclusive"],
    )


# -- have --------------------------------------------------------------------------------------


def vlan_supported(module):
    """True if the kernel has 802.1Q support (loaded as module 8021q or built in)."""
    if os.path.exists("/proc/net/vlan/config"):
        return True
    modprobe = module.get_bin_path("modprobe")
    if modprobe:
        module.run_command([modprobe, "-q", "8021q"])
    return os.path.exists("/proc/net/vlan/config")


def read_fallback(ctx, want):
    """Whether VLAN tenants are attached by veth (a kernel without 802.1Q and
    ``vlan_fallback: veth``); fails before anything changes with ``vlan_fallback: fail``."""
    vlan_present = [t.name for t in want["tenants"] if t.kind == "vlan" and t.state == "present"]
    if not vlan_present:
        return dict(vlan_supported=None, fallback=[])
    if vlan_supported(ctx.module):
        return dict(vlan_supported=True, fallback=[])
    if want["vlan_fallback"] != "veth":
        raise ModuleFailure(
            "this kernel has no 802.1Q VLAN support (module 8021q missing, no "
            "/proc/net/vlan), which VLAN tenants {} need; nothing was changed. Use a "
            "kernel with CONFIG_VLAN_8021Q, or set vlan_fallback: veth to attach them "
            "by veth for tests".format(", ".join(vlan_present))
        )
    ctx.warn(
        "this kernel has no 802.1Q VLAN support: VLAN tenants {} are attached by veth "
        "into host bridges tnvlan<vlan_id> instead of macvlan on "
        "<parent>.<vlan_id>".format(", ".join(vlan_present))
    )
    return dict(vlan_supported=False, fallback=vlan_present)


def read_tenant_namespace(ctx, host, host_names, name, netns_dir, field):
    """One tenant's namespace as it is: the state of its name, its links (``read_links``;
    each macvlan with ``lower``) and its main-table routes; and the open namespace. One that
    does not exist reads as new and empty (the plan creates it)."""
    path = os.path.join(netns_dir, name)
    ns = ctx.netns(name, field, created_here=True)
    links = read_links(ns)
    for link in links.values():
        if link["kind"] == "macvlan":
            link["lower"] = lower_name(link, ns, host, host_names)
    state = dict(
        path=path,
        namespace=namespace_state(path, ns),
        links=links,
        routes=namespace_routes(ns, {MAIN_TABLE}),
    )
    return state, ns


def read_have(ctx, want):
    """The host's links, and per tenant its namespace (``read_tenant_namespace``), whether
    its veth ends are paired; with ``exclusive``, the namespaces and host links left by
    tenants that are not listed. Objects a tenant refers to that are missing (a trunk NIC, a
    container's namespace or interface) fail here, before anything is touched (in check mode
    they are warnings: an earlier task may create them)."""
    if want["validate_only"]:
        return None
    have = read_fallback(ctx, want)
    host = ctx.netns(None)
    host_links = read_links(host)
    host_names = {link["ifindex"]: name for name, link in host_links.items()}
    for link in host_links.values():
        if link["kind"] == "vlan":
            link["lower"] = lower_name(link, host, host, host_names)
    have.update(host=host_links, tenants={}, unlisted={})
    listed = set()
    for tenant in want["tenants"]:
        listed.add(tenant.name)
        state, ns = read_tenant_namespace(
            ctx, host, host_names, tenant.name, want["netns_dir"], tenant.field("name")
        )
        have["tenants"][tenant.name] = state
        if tenant.state != "present":
            continue
        if tenant.kind == "container":
            if not state["namespace"]["live"]:
                ctx.missing(
                    tenant.label,
                    f"namespace name '{state['path']}' is not attached to container "
                    f"'{tenant.container}'; attach it first with tenantnet.nsproxy.netns",
                )
            elif tenant.interface not in state["links"]:
                ctx.missing(
                    tenant.field("interface"),
                    f"'{tenant.interface}' does not exist in the namespace of container "
                    f"'{tenant.container}'",
                )
        elif tenant.kind == "vlan" and not have["fallback"]:
            if tenant.parent not in host_links:
                ctx.missing(
                    tenant.field("attachment.parent"),
                    f"trunk NIC '{tenant.parent}' does not exist on this host",
                )
        else:
            end = host_links.get(tenant.host_interface)
            peer = state["links"].get(tenant.interface)
            state["paired"] = veth_paired(host, end, ns, peer)
    if want["exclusive"]:
        have["unlisted"] = read_unlisted(ctx, host, host_names, host_links, listed, want)
    return have


def read_unlisted(ctx, host, host_names, host_links, listed, want):
    """Tenants that are not listed but left objects tagged with their name: a namespace under
    ``netns_dir`` holding such a link, or host links (a host end whose namespace is gone)."""
    try:
        entries = sorted(os.listdir(want["netns_dir"]))
    except FileNotFoundError:
        entries = []
    found = {}
    for name in entries:
        if name in listed or not NAME_RE.fullmatch(name):
            continue
        state, _ns = read_tenant_namespace(
            ctx, host, host_names, name, want["netns_dir"], "exclusive"
        )
        if any(tenant_of(link["alias"]) == name for link in state["links"].values()):
            found[name] = state
    tagged = {tenant_of(link["alias"]) for link in host_links.values()}
    for name in sorted(n for n in tagged if n and n not in listed and n not in found):
        path = os.path.join(want["netns_dir"], name)
        found[name] = dict(path=path, namespace=namespace_state(path), links={}, routes=[])
    return found


# -- plan --------------------------------------------------------------------------------------


def bridge_of(tenant):
    """The host bridge of a veth-attached tenant (its own, or the VLAN fallback's)."""
    return tenant.bridge if tenant.kind == "bridge" else FALLBACK_BRIDGE % tenant.vlan_id


def _refuse_foreign(tenant, link, where, field):
    if link is not None and not link["owned"]:
        raise ModuleFailure(
            f"{tenant.label}: interface '{link['name']}' already exists in {where} and was not "
            f"created by {OWNER_TAG}; it is left alone. Rename it, or choose another {field}"
        )


class TenantPlanner:
    """Builds the plan of one call from the collection's planners: shared host objects
    (bridges, VLAN subinterfaces) once, then each tenant as one unit of the plan."""

    def __init__(self, want, have):
        self.want = want
        self.have = have
        self.plan = Plan()
        self.tracker = DiffTracker()  # tenant_network reports its own per-tenant diff
        self.ready = set()  # shared host objects already planned in this call
        self.fallback = bool(have["fallback"])

    def ensure_bridge(self, tenant, name):
        """The host bridge exists, up (created with STP off when missing). Bridges of other
        tools are used as they are."""
        if name in self.ready:
            return
        self.ready.add(name)
        link = self.have["host"].get(name)
        if link is not None and link["kind"] != "bridge":
            raise ModuleFailure(
                f"{tenant.label}: host interface '{name}' exists but is a "
                f"{link['kind'] or 'plain device'}, not a bridge"
            )
        new = link is None
        want = dict(
            name=name,
            netns=None,
            state="present",
            recreate=False,
            options=dict(stp=False if new else None, vlan_filtering=None, default_pvid=None),
            link=dict(state="up" if new or link["owned"] else None),
            purge_addresses=False,
            ports=None,
            purge_ports=False,
        )
        view = None if new else dict(link, stp=None, vlan_filtering=None, default_pvid=None)
        plan_bridge(self.plan, self.tracker, want, view, "the host", tenant.field("attachment"))

    def ensure_subinterface(self, tenant):
        """``<parent>.<vlan_id>`` exists on the trunk NIC and is up (one of another tool is
        used as it is; a different one under that name fails)."""
        name = tenant.subinterface
        if name in self.ready:
            return
        self.ready.add(name)
        current = self.have["host"].get(name)
        vlan = dict(name=name, id=tenant.vlan_id, protocol="802.1Q", mtu=None)
        plan_vlan(
            self.plan,
            self.tracker,
            vlan,
            tenant.parent,
            None,
            current,
            False,
            field=tenant.field("attachment.vlan_id"),
            recreate_hint=False,
            state="up" if current is None or current["owned"] else None,
        )

    def plan_present(self, tenant, state):
        tag = tenant_tag(tenant.name)
        links = state["links"]
        if tenant.kind != "container":
            plan_namespace(
                self.plan,
                self.tracker,
                dict(path=state["path"], state="present", loopback_up=True),
                state["namespace"],
            )
            if not state["namespace"]["live"]:
                links = {}
        current = links.get(tenant.interface)
        if tenant.kind == "container":
            addresses = (current or {}).get("addresses")
            plan_address_changes(self.plan, self.tracker, tenant.interface, tenant.name,
                                 tenant.addresses, addresses, False)  # fmt: skip
        elif tenant.kind == "bridge" or self.fallback:
            self.plan_veth(tenant, state, current, tag)
        else:
            _refuse_foreign(tenant, current, f"netns '{tenant.name}'", "interface")
            self.ensure_subinterface(tenant)
            macvlan = dict(
                name=tenant.interface,
                netns=tenant.name,
                mode=tenant.mode,
                mac=tenant.mac,
                mtu=tenant.mtu,
                addresses=tenant.addresses,
                state="up",
            )
            plan_macvlan(self.plan, self.tracker, macvlan, current, tenant.subinterface, None,
                         recreate=True, purge_addresses=True, alias=tag,
                         field=tenant.field("interface"))  # fmt: skip

    def plan_veth(self, tenant, state, current, tag):
        host_end = self.have["host"].get(tenant.host_interface)
        _refuse_foreign(tenant, host_end, "the host", "attachment.host_interface")
        if host_end is not None and host_end["kind"] != "veth":
            # Recreating it would delete a bridge or subinterface that tenants use (of this
            # call or another): never.
            raise ModuleFailure(
                f"{tenant.field('attachment.host_interface')}: '{tenant.host_interface}' exists "
                f"on the host as a {host_end['kind'] or 'plain device'}, not as the veth end of "
                f"{tenant.label}; it is left alone. Choose another host_interface"
            )
        _refuse_foreign(tenant, current, f"netns '{tenant.name}'", "interface")
        bridge = bridge_of(tenant)
        self.ensure_bridge(tenant, bridge)
        paired = state.get("paired", False)
        if current is not None and not paired:
            # Ours, but not the peer of the host end (another kind, or an orphan whose host end
            # went): made again.
            self.plan.add("link_del", ifname=tenant.interface, netns=tenant.name,
                          reason="recreate")  # fmt: skip
            current = None
        want = dict(
            name=tenant.host_interface,
            peer=tenant.interface,
            netns=None,
            peer_netns=tenant.name,
            state="present",
            recreate=True,
            purge_addresses=True,
            alias=tag,
            end=dict(mtu=tenant.mtu, master=bridge, state="up", alias=tag),
            peer_end=dict(
                mtu=tenant.mtu, mac=tenant.mac, state="up", addresses=tenant.addresses, alias=tag
            ),  # fmt: skip
        )
        have = dict(end=host_end, peer_end=current, paired=paired)
        plan_veth(self.plan, self.tracker, want, have, ("the host", f"netns '{tenant.name}'"))

    def plan_routes(self, tenant, state, first):
        """The routes of the tenant's main table, against what the kernel will still have
        after the unit's link and address changes (a deleted link takes its routes, a removed
        address the routes through its subnet)."""
        actions = self.plan.actions[first:]
        recreated = any(
            (a["op"] in ("link_del", "macvlan_create") and a.get("netns") == tenant.name
             and a["ifname"] == tenant.interface)
            or (a["op"] == "veth_add" and a["peer"] == tenant.interface)
            or a["op"] in ("netns_create", "netns_remove")
            for a in actions
        )  # fmt: skip
        removed = [
            a["address"] for a in actions if a["op"] == "addr_del" and a["netns"] == tenant.name
        ]
        routes = routes_surviving(
            state["routes"] if state["namespace"]["live"] else [],
            {tenant.interface} if recreated else (),
            removed,
        )
        plan_route_changes(self.plan, tenant.name, tenant.routes, routes, "present",
                           purge=tenant.kind != "container")  # fmt: skip

    def plan_removal(self, name, state, kind="bridge", host_interface=None, only_tagged=False):
        """Remove a tenant: its links in its namespace (ours only; with ``only_tagged``, only
        those tagged with its name), the namespace name, and its host end."""
        namespace = state["namespace"]
        if namespace["live"]:
            if kind != "container":
                for link in state["links"].values():
                    mine = tenant_of(link["alias"]) == name if only_tagged else link["owned"]
                    if mine:
                        self.plan.add("link_del", ifname=link["name"], netns=name)
            self.plan.add("netns_remove", path=state["path"])
        elif namespace["exists"]:
            self.plan.add("netns_remove", path=state["path"], reason="stale name")
        if kind == "container":
            return
        for link in self.have["host"].values():
            # The host end is a veth: an owned bridge of that name is another tenant's.
            ours = link["name"] == host_interface and link["owned"] and link["kind"] == "veth"
            if ours or tenant_of(link["alias"]) == name:
                self.plan.add("link_del", ifname=link["name"], netns=None)

    def build(self):
        for name, state in sorted(self.have["unlisted"].items()):
            self.plan.begin(tenant=name, unlisted=True)
            self.plan_removal(name, state, only_tagged=True)
        for tenant in self.want["tenants"]:
            state = self.have["tenants"][tenant.name]
            self.plan.begin(tenant=tenant.name)
            if tenant.state == "absent":
                self.plan_removal(tenant.name, state, tenant.kind, tenant.host_interface)
                continue
            first = len(self.plan.actions)
            self.plan_present(tenant, state)
            self.plan_routes(tenant, state, first)
        return self.plan, self.tracker


def build_plan(want, have):
    """want + have -> (plan, tracker), every tenant a unit of the plan (a failure undoes only
    what its own unit created). Pure: same result in check mode."""
    if have is None:  # validate_only
        return Plan(), DiffTracker()
    return TenantPlanner(want, have).build()


# -- result ------------------------------------------------------------------------------------


def read_result(ctx, want, have, plan):
    """Per changed tenant its actions as text, counts, the host bridges the tenants hang on,
    the VLAN fallback; the diff, one entry per changed tenant in plan order (so the tenants
    removed because they are not listed come first)."""
    result = dict(tenants={}, fallback=[])
    if have is None:
        result["summary"] = dict(tenants=len(want["tenants"]), changed=0, created=0, removed=0,
                                 unlisted=0)  # fmt: skip
        return result
    states = {t.name: t.state for t in want["tenants"]}
    diff = []
    created = removed = unlisted = 0
    for tags, actions in plan.units():
        name = tags.get("tenant")
        if not name:
            continue
        texts = [action_text(action) for action in actions]
        entry = dict(state=states.get(name, "absent"), actions=texts)
        existed = have["tenants"].get(name, have["unlisted"].get(name))["namespace"]["live"]
        if tags.get("unlisted"):
            entry["unlisted"] = True
            unlisted += 1
            what = "removed: not listed"
        elif entry["state"] == "absent":
            removed += 1
            what = "removed"
        elif not existed:
            created += 1
            what = "added"
        else:
            what = "changed"
        result["tenants"][name] = entry
        diff.append(
            dict(
                before_header=f"tenant {name}",
                after_header=f"tenant {name} ({what})",
                before="present\n" if existed else "absent\n",
                after="".join(text + "\n" for text in texts),
            )
        )
    on_bridges = [
        t
        for t in want["tenants"]
        if t.state == "present" and (t.kind == "bridge" or (t.kind == "vlan" and have["fallback"]))
    ]
    result.update(
        fallback=have["fallback"],
        vlan_supported=have["vlan_supported"],
        bridges=sorted({bridge_of(t) for t in on_bridges}),
        summary=dict(tenants=len(want["tenants"]), changed=len(result["tenants"]),
                     created=created, removed=removed + unlisted, unlisted=unlisted),
        diff=diff or None,
    )  # fmt: skip
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(
        module,
        want=build_want,
        have=read_have,
        plan=build_plan,
        result=read_result,
        netns_dir=module.params["netns_dir"],
        netlink=not module.params["validate_only"],
    )


if __name__ == "__main__":
    main()
