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
        shortened so that the name fits in 15 bytes.
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
        description:
          - Interface name inside its namespace (at most 15 bytes; no C(/), C(:), C(%) or
            whitespace).
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
          - IPv6 link-local addresses (C(fe80::/10)) are refused (the kernel manages them), and
            so is one IPv6 address listed with two prefix lengths. An IPv6 address the link
            holds with another prefix length is replaced.
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
        description:
          - Interface name of the shim (at most 15 bytes; no C(/), C(:), C(%) or whitespace).
        type: str
        required: true
      address:
        description:
          - The shim's address in CIDR form. Use a free address of the tenant subnet as a /32
            (C(192.0.2.254/32)) so no second connected route competes with the parent's. An IPv6
            link-local address is refused.
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
extends_documentation_fragment: [tenantnet.nsproxy.attributes, tenantnet.nsproxy.attributes.netlink]
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

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ParamError
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import (
    immutable_difference,
    plan_link_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.macvlan import (
    MACVLAN_MODES,
    macvlan_differences,
    plan_macvlan,
    plan_macvlan_absent,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.namespace import netns_text
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    NetnsMissing,
    link_names,
    lower_name,
    namespace_routes,
    read_link,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.plan import DiffTracker, Plan
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    RouteSpecError,
    normalize_route_specs,
    plan_route_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.runner import run
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    normalize_link_address,
    normalize_link_addresses,
    normalize_mac,
    validate_ifname,
    validate_int_range,
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.vlan import (
    default_vlan_name,
    plan_vlan,
    plan_vlan_absent,
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


def netns_label(spec):
    """``host`` for the module's own namespace, else the namespace as the user wrote it."""
    return spec or "host"


# -- want --------------------------------------------------------------------------------------
def normalize_params(params):
    """Module parameters -> ``want`` (see the module's DOCUMENTATION). Raises ParamError naming
    the field for anything the kernel would refuse or that contradicts itself."""
    parent = validate_ifname(params.get("parent"), "parent")
    netns = params.get("netns") or None
    vlan_id = params.get("vlan_id")
    vlan = None
    if vlan_id is None:
        for key in ("vlan_name", "vlan_mtu"):
            if params.get(key) is not None:
                raise ParamError(key, "only allowed together with vlan_id (there is no VLAN)")
    else:
        vlan_id = validate_int_range(vlan_id, "vlan_id", 1, 4094)
        name = params.get("vlan_name") or default_vlan_name(parent, vlan_id)
        validate_ifname(name, "vlan_name")
        if name == parent:
            raise ParamError("vlan_name", f"'{name}' is the parent's name; choose another one")
        vlan = {
            "name": name,
            "id": vlan_id,
            "protocol": params.get("vlan_protocol") or "802.1Q",
            "mtu": validate_mtu(params.get("vlan_mtu"), "vlan_mtu"),
        }
    lower = vlan["name"] if vlan else parent

    macvlans = []
    seen = {}
    for i, spec in enumerate(params.get("macvlans") or []):
        field = f"macvlans[{i}]"
        name = validate_ifname(spec.get("name"), f"{field}.name")
        target = spec.get("netns") or netns
        mode = spec.get("mode") or "bridge"
        if mode not in MACVLAN_MODES:
            raise ParamError(
                f"{field}.mode", f"'{mode}' is not allowed; use one of {MACVLAN_MODES}"
            )
        key = (target, name)
        if key in seen:
            raise ParamError(
                f"{field}.name",
                f"'{name}' is listed twice for {netns_text(target)} (also macvlans[{seen[key]}])",
            )
        seen[key] = i
        if target == netns and name in (parent, lower):
            raise ParamError(f"{field}.name", f"'{name}' is the name of the lower device")
        macvlans.append(
            {
                "field": field,
                "name": name,
                "netns": target,
                "mode": mode,
                "mac": normalize_mac(spec.get("mac"), f"{field}.mac"),
                "mtu": validate_mtu(spec.get("mtu"), f"{field}.mtu"),
                "addresses": normalize_link_addresses(spec.get("addresses"), f"{field}.addresses"),
                "purge_addresses": bool(spec.get("purge_addresses")),
                "state": spec.get("link_state") or "up",
            }
        )

    shim = None
    shim_spec = params.get("host_shim")
    if shim_spec:
        name = validate_ifname(shim_spec.get("name"), "host_shim.name")
        if name in (parent, lower) or (netns, name) in seen:
            raise ParamError("host_shim.name", f"'{name}' is already used by another interface")
        if shim_spec.get("address") in (None, ""):
            raise ParamError("host_shim.address", "required: the shim's address in CIDR form")
        address = normalize_link_address(shim_spec["address"], "host_shim.address")
        try:
            routes = normalize_route_specs(
                [{"dst": dst, "dev": name} for dst in shim_spec.get("routes") or []]
            )
        except RouteSpecError as exc:
            problem = str(exc)[len(exc.field) :].lstrip(": ")
            raise ParamError("host_shim." + exc.field, problem) from None
        shim = {
            "name": name,
            "address": address,
            "mtu": validate_mtu(shim_spec.get("mtu"), "host_shim.mtu"),
            "routes": routes,
        }

    return {
        "netns": netns,
        "parent": parent,
        "lower": lower,
        "vlan": vlan,
        "macvlans": macvlans,
        "shim": shim,
        "state": params.get("state") or "present",
        "recreate": bool(params.get("recreate")),
    }


# -- have --------------------------------------------------------------------------------------
def missing_parent(want):
    return f"interface '{want['parent']}' does not exist in {netns_text(want['netns'])}"


def check_environment(want, have):
    """Fail before any change when the parent is missing or an MTU cannot fit its lower device.
    ``have`` is what ``gather`` read (see ``plan``)."""
    parent = have.get("parent")
    if parent is None:
        raise ParamError("parent", missing_parent(want) + "; nothing was changed")
    if want["state"] != "present":
        return
    if want["vlan"] and parent.get("state") != "up":
        # vlan_dev_open refuses (ENETDOWN) while the real device is down.
        raise ParamError(
            "parent",
            f"'{want['parent']}' is down, so the VLAN subinterface could not be brought up; "
            "bring the parent up first (this module never changes the parent)",
        )
    parent_mtu = parent.get("mtu") or 0
    lower_mtu = parent_mtu
    if want["vlan"]:
        vlan_mtu = want["vlan"]["mtu"]
        if vlan_mtu is not None and vlan_mtu > parent_mtu:
            raise ParamError(
                "vlan_mtu",
                f"{vlan_mtu} exceeds the MTU {parent_mtu} of parent '{want['parent']}'; "
                "raise the parent's MTU first",
            )
        current = have.get("vlan") or {}
        lower_mtu = vlan_mtu or (current.get("mtu") if current else None) or parent_mtu
    for macvlan in want["macvlans"]:
        if macvlan["mtu"] is not None and macvlan["mtu"] > lower_mtu:
            raise ParamError(
                f"{macvlan['field']}.mtu",
                f"{macvlan['mtu']} exceeds the MTU {lower_mtu} of its lower device "
                f"'{want['lower']}'",
            )
    shim = want["shim"]
    if shim and shim["mtu"] is not None and shim["mtu"] > lower_mtu:
        raise ParamError(
            "host_shim.mtu",
            f"{shim['mtu']} exceeds the MTU {lower_mtu} of its lower device '{want['lower']}'",
        )


def _macvlan_namespace(ctx, macvlan, absent):
    """The macvlan's namespace. For state=absent a namespace that is gone means the macvlan is
    gone too (a tenant torn down first): None instead of a failure."""
    try:
        return ctx.netns(macvlan["netns"], f"{macvlan['field']}.netns")
    except NetnsMissing:
        if absent:
            return None
        raise


def read_have(ctx, want):
    """Read everything ``plan`` needs (see its docstring). Opens every namespace first, so a
    missing one fails (naming its field) before anything is touched; then the checks of
    ``check_environment``. In check mode a missing namespace or parent is a warning: an
    earlier task may create it."""
    absent = want["state"] == "absent"
    ns = ctx.netns(want["netns"])
    targets = [_macvlan_namespace(ctx, m, absent) for m in want["macvlans"]]
    names = link_names(ns)
    have = {"parent": read_link(ns, want["parent"]), "vlan": None, "macvlans": [], "shim": None}
    if want["vlan"]:
        have["vlan"] = read_link(ns, want["vlan"]["name"])
        if have["vlan"] is not None:
            have["vlan"]["lower"] = lower_name(have["vlan"], ns, ns, names)
    for macvlan, tns in zip(want["macvlans"], targets):
        link = read_link(tns, macvlan["name"]) if tns is not None else None
        if link is not None:
            link["lower"] = lower_name(link, tns, ns, names)
        have["macvlans"].append(link)
    if want["shim"]:
        shim = read_link(ns, want["shim"]["name"])
        if shim is not None:
            shim["lower"] = lower_name(shim, ns, ns, names)
            have["shim_routes"] = [
                route
                for route in namespace_routes(ns, {254}, names)
                if route["dev"] == shim["name"]
            ]
        have["shim"] = shim
    if have["parent"] is None:
        ctx.missing("parent", missing_parent(want))
    else:
        check_environment(want, have)
    return have


# -- plan --------------------------------------------------------------------------------------
def plan(want, have):
    """Compute ``(Plan, DiffTracker)`` turning ``have`` into ``want``.

    ``have``: ``parent`` (link dict), ``vlan`` (link dict or None, with ``lower``: the name of
    its parent), ``macvlans`` (one link dict or None per wanted macvlan, each with ``lower``:
    the name of its lower device in the parent's namespace, or a description when it is
    elsewhere), ``shim`` (link dict or None, with ``lower``) and ``shim_routes`` (canonical
    routes whose dev is the shim). Link dicts are ``netlink.describe_link`` results.
    Raises ModuleFailure for an immutable difference without ``recreate``.
    """
    actions = Plan()
    tracker = DiffTracker()
    netns = want["netns"]
    lower = want["lower"]
    recreate = want["recreate"]

    if want["state"] == "absent":
        for macvlan, current in zip(want["macvlans"], have.get("macvlans") or []):
            prefix = f"macvlan {macvlan['name']}@{netns_label(macvlan['netns'])}."
            plan_macvlan_absent(
                actions, tracker, macvlan, current, prefix, f"{macvlan['field']}.name"
            )
        shim = want["shim"]
        if shim:
            shim_macvlan = {"name": shim["name"], "netns": netns}
            plan_macvlan_absent(
                actions,
                tracker,
                shim_macvlan,
                have.get("shim"),
                f"host_shim {shim['name']}.",
                "host_shim.name",
            )
        if want["vlan"]:
            plan_vlan_absent(actions, tracker, want["vlan"], netns, have.get("vlan"))
        return actions, tracker

    vlan_recreated = False
    if want["vlan"]:
        vlan_recreated = plan_vlan(
            actions, tracker, want["vlan"], want["parent"], netns, have.get("vlan"), recreate
        )

    for macvlan, current in zip(want["macvlans"], have.get("macvlans") or []):
        plan_macvlan(
            actions,
            tracker,
            macvlan,
            current,
            lower,
            netns,
            prefix=f"macvlan {macvlan['name']}@{netns_label(macvlan['netns'])}.",
            field=macvlan["field"],
            recreate=recreate,
            purge_addresses=macvlan["purge_addresses"],
            lower_recreated=vlan_recreated,
        )

    # The host shim: a bridge-mode macvlan of ours in the parent's namespace, with host routes.
    shim = want["shim"]
    if shim:
        current = have.get("shim")
        prefix = f"host_shim {shim['name']}."
        if current is not None and vlan_recreated and current.get("lower") == lower:
            current = None
        if current is not None:
            differences = macvlan_differences("bridge", lower, current)
            mode_now = (current.get("kind_data") or {}).get("mode")
            if not differences and mode_now != "bridge":
                differences = f"mode {mode_now} instead of bridge"
            if differences:
                if not recreate:
                    raise immutable_difference(
                        "host_shim", f"interface '{shim['name']}'", differences
                    )
                actions.add("link_del", ifname=shim["name"], netns=netns, reason=differences)
                current = None
        tracker.add(prefix + "parent", lower, (current or {}).get("lower"))
        if current is None:
            actions.add(
                "macvlan_create",
                ifname=shim["name"],
                netns=netns,
                lower=lower,
                lower_netns=netns,
                mode="bridge",
            )
        shim_want = {"mtu": shim["mtu"], "addresses": [shim["address"]], "state": "up"}
        plan_link_changes(
            actions, tracker, shim["name"], netns, shim_want, current, True, prefix=prefix
        )
        have_routes = have.get("shim_routes") or [] if current is not None else []
        tracker.add(
            prefix + "routes",
            sorted(r["dst"] for r in shim["routes"]),
            sorted(r["dst"] for r in have_routes),
        )
        plan_route_changes(actions, netns, shim["routes"], have_routes, "present", purge=True)
    return actions, tracker


def unowned_vlan_left(want, have):
    """For state=absent: the name of a VLAN kept because this collection did not create it."""
    current = have.get("vlan") or {}
    kept = want["state"] == "absent" and want["vlan"] and current.get("kind") == "vlan"
    return want["vlan"]["name"] if kept and not current.get("owned") else None


# -- result ------------------------------------------------------------------------------------
def read_result(ctx, want, have, actions):
    """The resulting objects: ``vlan``, ``macvlans`` and ``host_shim`` (with its routes).
    Read from the kernel (in check mode: as they are before the planned changes)."""
    kept = unowned_vlan_left(want, have)
    if kept:
        ctx.warn(
            f"VLAN subinterface '{kept}' was not created by this collection, so it was left "
            "in place; delete it yourself if nothing else uses it"
        )
    ns = ctx.netns(want["netns"])
    vlan = read_link(ns, want["vlan"]["name"]) if want["vlan"] else None
    macvlans = []
    for macvlan in want["macvlans"]:
        tns = _macvlan_namespace(ctx, macvlan, want["state"] == "absent")
        link = read_link(tns, macvlan["name"]) if tns is not None else None
        if link is not None:
            link["lower"] = want["lower"]
            macvlans.append(link)
    shim = None
    if want["shim"]:
        shim = read_link(ns, want["shim"]["name"])
        if shim is not None:
            shim["routes"] = [
                route["dst"]
                for route in namespace_routes(ns, {254})
                if route["dev"] == shim["name"] and route["proto"] != "kernel"
            ]
    return {"vlan": vlan, "macvlans": macvlans, "host_shim": shim}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run(module, want=normalize_params, have=read_have, plan=plan, result=read_result)


if __name__ == "__main__":
    main()
