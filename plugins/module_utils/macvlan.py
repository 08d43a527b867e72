# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""macvlan_vlan: an 802.1Q subinterface on a parent NIC, macvlans on top of it (each in its own
namespace) and an optional host shim. Normalisation and planning are pure (dicts in, plan out)
and unit-tested; ``gather`` and ``apply_action`` use the shared netlink layer (``netlink.py``).

Kernel facts this follows: a VLAN's id, protocol and parent, and a macvlan's parent, cannot be
changed in place (``changelink`` ignores them silently), so a difference fails or, with
``recreate``, deletes and creates again. A macvlan's mode can change in place except to or from
``passthru``. The kernel's default mode is VEPA, ours is bridge (as Docker and CNI do). A
child's MTU cannot exceed its lower device's.
"""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    IFNAMSIZ,
    OWNER_TAG,
    DiffTracker,
    ModuleFailure,
    ParamError,
    Plan,
    Rollback,
    apply_plan,
    normalize_cidr,
    normalize_cidrs,
    normalize_mac,
    plan_link_changes,
    validate_ifname,
    validate_int_range,
    validate_mtu,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    apply_link_action,
    create_link,
    delete_link,
    find_link,
    netnsid_of,
    read_link,
    set_link,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    RouteSpecError,
    apply_route_action,
    normalize_route_specs,
    plan_routes,
    read_routes,
    route_text,
)

MACVLAN_MODES = ("bridge", "private", "vepa", "passthru", "source")
VLAN_PROTOCOLS = {"802.1Q": 0x8100, "802.1ad": 0x88A8}
# be16 decoded either way round, depending on the pyroute2 version.
_PROTOCOL_BY_NUMBER = {0x8100: "802.1Q", 0x0081: "802.1Q", 0x88A8: "802.1ad", 0xA888: "802.1ad"}


def default_vlan_name(parent, vlan_id):
    """``<parent>.<id>``, with the parent part shortened so the name fits in 15 characters."""
    suffix = f".{vlan_id}"
    return parent[: IFNAMSIZ - len(suffix)] + suffix


def vlan_protocol_name(value):
    """Kernel IFLA_VLAN_PROTOCOL value -> ``802.1Q`` / ``802.1ad`` (None stays None)."""
    if value is None:
        return None
    return _PROTOCOL_BY_NUMBER.get(value, hex(value))


def netns_label(spec):
    """``host`` for the module's own namespace, else the namespace as the user wrote it."""
    return spec or "host"


def netns_text(spec):
    """For sentences: ``the host namespace`` or ``netns 't1'``."""
    return f"netns '{spec}'" if spec else "the host namespace"


# ---------------------------------------------------------------------------------------------
# want
# ---------------------------------------------------------------------------------------------
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
                "addresses": normalize_cidrs(spec.get("addresses"), f"{field}.addresses"),
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
        address = normalize_cidr(shim_spec["address"], "host_shim.address")
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


# ---------------------------------------------------------------------------------------------
# checks on have (still before anything is touched)
# ---------------------------------------------------------------------------------------------
def check_environment(want, have):
    """Fail before any change when the parent is missing or an MTU cannot fit its lower device.
    ``have`` is what ``gather`` read (see ``plan``)."""
    parent = have.get("parent")
    if parent is None:
        raise ParamError(
            "parent",
            f"interface '{want['parent']}' does not exist in {netns_text(want['netns'])}; "
            "nothing was changed",
        )
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


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def _conflict(field, what, differences, recreate_hint=True):
    hint = " Set recreate: true to delete and create it again." if recreate_hint else ""
    return ModuleFailure(
        f"{field}: {what} exists with {differences}, which cannot be changed in place.{hint}",
        field=field,
    )


def _vlan_differences(want_vlan, parent, have_vlan):
    """Immutable differences of an existing link named like the VLAN, as text (or None)."""
    if have_vlan["kind"] != "vlan":
        return f"kind {have_vlan['kind'] or 'device'} instead of vlan"
    data = have_vlan.get("kind_data") or {}
    diffs = []
    if data.get("id") != want_vlan["id"]:
        diffs.append(f"VLAN id {data.get('id')} instead of {want_vlan['id']}")
    if have_vlan.get("lower") != parent:
        diffs.append(f"parent {have_vlan.get('lower') or 'unknown'} instead of {parent}")
    protocol = vlan_protocol_name(data.get("protocol"))
    if protocol is not None and protocol != want_vlan["protocol"]:
        diffs.append(f"protocol {protocol} instead of {want_vlan['protocol']}")
    return ", ".join(diffs) or None


def _macvlan_differences(want_macvlan, lower, have_link):
    if have_link["kind"] != "macvlan":
        return f"kind {have_link['kind'] or 'device'} instead of macvlan"
    diffs = []
    if have_link.get("lower") != lower:
        diffs.append(f"parent {have_link.get('lower') or 'unknown'} instead of {lower}")
    mode = (have_link.get("kind_data") or {}).get("mode")
    want_mode = want_macvlan.get("mode")
    if want_mode and mode != want_mode and "passthru" in (mode, want_mode):
        diffs.append(f"mode {mode} instead of {want_mode} (passthru cannot be switched)")
    return ", ".join(diffs) or None


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
        _plan_absent(want, have, actions, tracker)
        return actions, tracker

    # The VLAN subinterface.
    vlan = want["vlan"]
    vlan_recreated = False
    if vlan:
        have_vlan = old_vlan = have.get("vlan")
        prefix = f"vlan {vlan['name']}."
        if have_vlan is not None:
            differences = _vlan_differences(vlan, want["parent"], have_vlan)
            if differences:
                if not recreate:
                    raise _conflict("vlan_id", f"interface '{vlan['name']}'", differences)
                actions.add("link_del", ifname=vlan["name"], netns=netns, reason=differences)
                tracker.add(prefix + "recreated", differences, None)
                have_vlan = None
                vlan_recreated = True
        tracker.add(prefix + "id", vlan["id"], (old_vlan or {}).get("kind_data", {}).get("id"))
        tracker.add(prefix + "parent", want["parent"], (old_vlan or {}).get("lower"))
        if have_vlan is None:
            actions.add(
                "vlan_create",
                ifname=vlan["name"],
                netns=netns,
                parent=want["parent"],
                vlan_id=vlan["id"],
                protocol=vlan["protocol"],
            )
        vlan_attrs = {"mtu": vlan["mtu"], "state": "up"}
        plan_link_changes(
            actions, tracker, vlan["name"], netns, vlan_attrs, have_vlan, prefix=prefix
        )

    # The macvlans.
    for macvlan, current in zip(want["macvlans"], have.get("macvlans") or []):
        prefix = f"macvlan {macvlan['name']}@{netns_label(macvlan['netns'])}."
        if current is not None and vlan_recreated and current.get("lower") == lower:
            current = None  # deleting the VLAN deletes the macvlans on it
        old = current
        if current is not None:
            differences = _macvlan_differences(macvlan, lower, current)
            if differences:
                if not recreate:
                    raise _conflict(
                        f"{macvlan['field']}",
                        f"interface '{macvlan['name']}' in {netns_text(macvlan['netns'])}",
                        differences,
                    )
                actions.add(
                    "link_del", ifname=macvlan["name"], netns=macvlan["netns"], reason=differences
                )
                tracker.add(prefix + "recreated", differences, None)
                current = None
        tracker.add(prefix + "parent", lower, (old or {}).get("lower"))
        mode_now = (old or {}).get("kind_data", {}).get("mode")
        if current is None:
            actions.add(
                "macvlan_create",
                ifname=macvlan["name"],
                netns=macvlan["netns"],
                lower=lower,
                lower_netns=netns,
                mode=macvlan["mode"],
            )
            tracker.add(prefix + "mode", macvlan["mode"], mode_now)
        elif tracker.add(prefix + "mode", macvlan["mode"], mode_now):
            actions.add(
                "macvlan_mode", ifname=macvlan["name"], netns=macvlan["netns"], mode=macvlan["mode"]
            )
        plan_link_changes(
            actions,
            tracker,
            macvlan["name"],
            macvlan["netns"],
            {key: macvlan[key] for key in ("mtu", "mac", "addresses", "state")},
            current,
            macvlan["purge_addresses"],
            prefix=prefix,
        )

    # The host shim: a bridge-mode macvlan of ours in the parent's namespace.
    shim = want["shim"]
    if shim:
        current = have.get("shim")
        prefix = f"host_shim {shim['name']}."
        if current is not None and vlan_recreated and current.get("lower") == lower:
            current = None
        if current is not None:
            differences = _macvlan_differences({"mode": "bridge"}, lower, current)
            mode_now = (current.get("kind_data") or {}).get("mode")
            if not differences and mode_now != "bridge":
                differences = f"mode {mode_now} instead of bridge"
            if differences:
                if not recreate:
                    raise _conflict("host_shim", f"interface '{shim['name']}'", differences)
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
        route_actions = plan_routes(shim["routes"], have_routes, "present", purge=True)
        tracker.add(
            prefix + "routes",
            sorted(r["dst"] for r in shim["routes"]),
            sorted(r["dst"] for r in have_routes),
        )
        for action in route_actions:
            actions.add(
                "route_" + action["op"],
                netns=netns,
                route=action["route"],
                text=route_text(action["route"]),
            )
    return actions, tracker


def _plan_absent(want, have, actions, tracker):
    """Delete the listed macvlans, the shim, and the VLAN when this collection created it."""
    netns = want["netns"]
    for macvlan, current in zip(want["macvlans"], have.get("macvlans") or []):
        prefix = f"macvlan {macvlan['name']}@{netns_label(macvlan['netns'])}."
        if current is not None and current["kind"] != "macvlan":
            raise ModuleFailure(
                f"{macvlan['field']}.name: '{macvlan['name']}' in "
                f"{netns_text(macvlan['netns'])} is a {current['kind'] or 'device'}, not a "
                "macvlan; it was left alone",
                field=f"{macvlan['field']}.name",
            )
        if tracker.add(prefix + "exists", False, current is not None):
            actions.add("link_del", ifname=macvlan["name"], netns=macvlan["netns"])
    shim = want["shim"]
    if shim:
        current = have.get("shim")
        if current is not None and current["kind"] != "macvlan":
            raise ModuleFailure(
                f"host_shim.name: '{shim['name']}' is a {current['kind'] or 'device'}, not a "
                "macvlan; it was left alone",
                field="host_shim.name",
            )
        if tracker.add(f"host_shim {shim['name']}.exists", False, current is not None):
            actions.add("link_del", ifname=shim["name"], netns=netns)
    vlan = want["vlan"]
    if vlan:
        current = have.get("vlan")
        if current is not None and current["kind"] != "vlan":
            raise ModuleFailure(
                f"vlan_name: '{vlan['name']}' is a {current['kind'] or 'device'}, not a VLAN; "
                "it was left alone",
                field="vlan_name",
            )
        if current is not None and not current.get("owned"):
            # Not created by this collection (Docker's eth0.N, the distribution's config...):
            # deleting it would take every other user of the VLAN down with it.
            tracker.add(f"vlan {vlan['name']}.exists", True, True)
            return
        if tracker.add(f"vlan {vlan['name']}.exists", False, current is not None):
            actions.add("link_del", ifname=vlan["name"], netns=netns)


def unowned_vlan_left(want, have):
    """For state=absent: the name of a VLAN kept because this collection did not create it."""
    current = have.get("vlan") or {}
    kept = want["state"] == "absent" and want["vlan"] and current.get("kind") == "vlan"
    return want["vlan"]["name"] if kept and not current.get("owned") else None


# ---------------------------------------------------------------------------------------------
# netlink: have and apply (through the shared layer in netlink.py)
# ---------------------------------------------------------------------------------------------
def _link_names(ns):
    return {
        msg["index"]: msg.get_attr("IFLA_IFNAME")
        for msg in ns.call("listing interfaces", ns.ipr.get_links)
    }


def _lower_of(link, link_ns, parent_ns, parent_names):
    """Name of the lower device of ``link`` (in ``link_ns``) when that device lives in the
    parent's namespace, else a description such as ``link #7 of another namespace``."""
    index = link.get("link_index")
    if not index:
        return None
    if link_ns.same_as(parent_ns):
        in_parent_ns = link.get("link_netnsid") is None
    else:
        nsid = netnsid_of(link_ns, parent_ns)
        in_parent_ns = nsid is not None and link.get("link_netnsid") == nsid
    if in_parent_ns and index in parent_names:
        return parent_names[index]
    return f"link #{index} of another namespace"


def _open_target(nss, macvlan, absent):
    """The macvlan's namespace. For state=absent a namespace that is gone means the macvlan is
    gone too (a tenant torn down first): None instead of a failure."""
    try:
        return nss.get(macvlan["netns"], f"{macvlan['field']}.netns")
    except ParamError:
        if absent:
            return None
        raise


def gather(nss, want):
    """Read everything ``plan`` needs. Opens every namespace first, so a missing one fails
    (naming its field) before anything is touched."""
    ns = nss.get(want["netns"], "netns")
    targets = [_open_target(nss, m, want["state"] == "absent") for m in want["macvlans"]]
    names = _link_names(ns)
    have = {"parent": read_link(ns, want["parent"]), "vlan": None, "macvlans": [], "shim": None}
    if want["vlan"]:
        have["vlan"] = read_link(ns, want["vlan"]["name"])
        if have["vlan"] is not None:
            have["vlan"]["lower"] = _lower_of(have["vlan"], ns, ns, names)
    for macvlan, tns in zip(want["macvlans"], targets):
        link = read_link(tns, macvlan["name"]) if tns is not None else None
        if link is not None:
            link["lower"] = _lower_of(link, tns, ns, names)
        have["macvlans"].append(link)
    if want["shim"]:
        shim = read_link(ns, want["shim"]["name"])
        if shim is not None:
            shim["lower"] = _lower_of(shim, ns, ns, names)
            have["shim_routes"] = [
                route
                for route in ns.call("reading routes", read_routes, ns.ipr, names, {254})
                if route["dev"] == shim["name"]
            ]
        have["shim"] = shim
    return have


def _index(ns, ifname):
    msg = find_link(ns, ifname)
    if msg is None:
        raise ModuleFailure(f"interface '{ifname}' disappeared from {ns.label} meanwhile")
    return msg["index"]


def create_macvlan(nss, action, rollback):
    """Create a macvlan on ``lower`` directly inside its target namespace."""
    lns = nss.get(action["lower_netns"], "netns")
    tns = nss.get(action["netns"], "netns")
    create_link(
        lns,
        rollback,
        action["ifname"],
        "macvlan",
        target=tns,
        link=_index(lns, action["lower"]),
        macvlan_mode=action["mode"],
    )


def apply(nss, actions):
    """Execute the plan in order; on failure delete what this call created."""
    rollback = Rollback()

    def step(action):
        op = action["op"]
        ns = nss.get(action.get("netns"), "netns")
        if op == "vlan_create":
            create_link(
                ns,
                rollback,
                action["ifname"],
                "vlan",
                link=_index(ns, action["parent"]),
                vlan_id=action["vlan_id"],
                vlan_protocol=VLAN_PROTOCOLS[action["protocol"]],
            )
        elif op == "macvlan_create":
            create_macvlan(nss, action, rollback)
        elif op == "macvlan_mode":
            set_link(
                ns,
                _index(ns, action["ifname"]),
                action["ifname"],
                kind="macvlan",
                macvlan_mode=action["mode"],
            )
        elif op == "link_del":
            msg = find_link(ns, action["ifname"])
            if msg is not None:
                delete_link(ns, msg["index"], action["ifname"])
        elif op in ("route_replace", "route_delete"):
            ifindex = {name: index for index, name in _link_names(ns).items()}
            route_action = {"op": op[len("route_") :], "route": action["route"]}
            ns.call(
                f"{op[6:]} route {action['text']}",
                apply_route_action,
                ns.ipr,
                route_action,
                ifindex,
            )
        else:
            apply_link_action(nss, action, rollback)

    apply_plan(actions, step, rollback)


def read_result(nss, want):
    """The resulting objects: ``vlan``, ``macvlans`` and ``host_shim`` (with its routes)."""
    ns = nss.get(want["netns"], "netns")
    vlan = read_link(ns, want["vlan"]["name"]) if want["vlan"] else None
    macvlans = []
    for macvlan in want["macvlans"]:
        tns = _open_target(nss, macvlan, want["state"] == "absent")
        link = read_link(tns, macvlan["name"]) if tns is not None else None
        if link is not None:
            link["lower"] = want["lower"]
            macvlans.append(link)
    shim = None
    if want["shim"]:
        shim = read_link(ns, want["shim"]["name"])
        if shim is not None:
            names = _link_names(ns)
            shim["routes"] = [
                route["dst"]
                for route in ns.call("reading routes", read_routes, ns.ipr, names, {254})
                if route["dev"] == shim["name"] and route["proto"] != "kernel"
            ]
    return {"vlan": vlan, "macvlans": macvlans, "host_shim": shim}


__all__ = [
    "MACVLAN_MODES",
    "OWNER_TAG",
    "VLAN_PROTOCOLS",
    "check_environment",
    "default_vlan_name",
    "normalize_params",
    "plan",
    "unowned_vlan_left",
]
