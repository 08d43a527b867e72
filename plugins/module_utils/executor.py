# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How each planned action is carried out through netlink: one function per ``op``, shared by
every module (the planners make the actions, the runner calls ``execute`` for each).

Interfaces are looked up by name when the action runs, since an earlier action may have
created, moved or renamed them. What an action creates is registered on the rollback, so a
failure later in the same unit removes it again."""

from __future__ import annotations

import errno

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.netlink import (
    add_address,
    attach_named_netns,
    create_link,
    create_named_netns,
    delete_link,
    find_link,
    link_names,
    open_netns,
    remove_address,
    remove_named_netns,
    set_link,
    set_mtu,
    temp_ifname,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.ownership import OWNER_TAG
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import (
    apply_route_action,
    route_text,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.vlan import VLAN_PROTOCOLS

BRIDGE_ATTRS = (
    ("stp", "br_stp_state", int),
    ("vlan_filtering", "br_vlan_filtering", int),
    ("default_pvid", "br_vlan_default_pvid", int),
)
"""Bridge options of a plan -> IFLA_BR_* keyword of pyroute2 and the kernel's value."""


def bridge_attrs(action):
    """The pyroute2 keywords for the bridge options in ``action``."""
    attrs = {}
    for key, nla, convert in BRIDGE_ATTRS:
        if key in action:
            attrs[nla] = convert(action[key])
    return attrs


def _link(ns, ifname):
    msg = find_link(ns, ifname)
    if msg is None:
        raise ModuleFailure(f"interface '{ifname}' disappeared from {ns.label} meanwhile")
    return msg


# -- namespaces --------------------------------------------------------------------------------


def _netns_create(ctx, action, rollback):
    path = action["path"]
    create_named_netns(path)
    rollback.push(f"creating {path}", lambda: remove_named_netns(path))


def _netns_attach(ctx, action, rollback):
    path = action["path"]
    attach_named_netns(path, action["source"])
    rollback.push(f"attaching {path}", lambda: remove_named_netns(path))


def _netns_remove(ctx, action, rollback):
    remove_named_netns(action["path"])


def _loopback_up(ctx, action, rollback):
    with open_netns(action["path"], "name") as ns:
        lo = find_link(ns, "lo")
        if lo is None:
            raise ModuleFailure(f"the namespace at {action['path']} has no loopback interface")
        set_link(ns, lo["index"], "lo", state="up")


# -- links -------------------------------------------------------------------------------------


def _bridge_add(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    alias = action.get("alias", OWNER_TAG)
    create_link(ns, rollback, action["ifname"], "bridge", alias=alias, **bridge_attrs(action))


def _bridge_set(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    msg = _link(ns, action["ifname"])
    set_link(ns, msg["index"], action["ifname"], kind="bridge", **bridge_attrs(action))


def _veth_add(ctx, action, rollback):
    """The pair: ``ifname`` in its namespace, the peer directly inside its own namespace
    under a temporary name, then renamed there and tagged."""
    ns = ctx.netns(action["netns"])
    pns = ctx.netns(action["peer_netns"], "peer_netns")
    alias = action.get("alias", OWNER_TAG)
    tmp = temp_ifname("tnv")
    peer = {"ifname": tmp, "net_ns_fd": pns.fd}
    create_link(ns, rollback, action["ifname"], "veth", alias=alias, peer=peer)
    msg = _link(pns, tmp)
    set_link(pns, msg["index"], tmp, ifname=action["peer"])
    set_link(pns, msg["index"], action["peer"], ifalias=alias)


def _vlan_create(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    create_link(
        ns,
        rollback,
        action["ifname"],
        "vlan",
        alias=action.get("alias", OWNER_TAG),
        link=_link(ns, action["parent"])["index"],
        vlan_id=action["vlan_id"],
        vlan_protocol=VLAN_PROTOCOLS[action["protocol"]],
    )


def _macvlan_create(ctx, action, rollback):
    """A macvlan on ``lower`` (in ``lower_netns``), made directly inside its namespace."""
    lns = ctx.netns(action["lower_netns"])
    tns = ctx.netns(action["netns"])
    create_link(
        lns,
        rollback,
        action["ifname"],
        "macvlan",
        alias=action.get("alias", OWNER_TAG),
        target=None if tns.same_as(lns) else tns,
        link=_link(lns, action["lower"])["index"],
        macvlan_mode=action["mode"],
    )


def _macvlan_mode(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    msg = _link(ns, action["ifname"])
    set_link(ns, msg["index"], action["ifname"], kind="macvlan", macvlan_mode=action["mode"])


def _link_set(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    ifname = action["ifname"]
    msg = _link(ns, ifname)
    attrs = {}
    for key, value in action.items():
        if key in ("op", "ifname", "netns", "mtu"):
            continue
        if key == "mac":
            attrs["address"] = value
        elif key == "master":
            attrs["master"] = _link(ns, value)["index"] if value else 0
        else:
            attrs[key] = value
    if "mtu" in action:
        set_mtu(ns, msg, ifname, action["mtu"])
    if attrs:
        set_link(ns, msg["index"], ifname, **attrs)


def _link_del(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    msg = find_link(ns, action["ifname"])
    if msg is not None:  # gone already, e.g. the peer of a veth deleted just before
        delete_link(ns, msg["index"], action["ifname"])


# -- addresses and routes ----------------------------------------------------------------------


def _addr_add(ctx, action, rollback):
    ns = ctx.netns(action["netns"])
    ifname, cidr = action["ifname"], action["address"]
    if add_address(ns, _link(ns, ifname)["index"], ifname, cidr):
        rollback.push(
            f"adding {cidr} to '{ifname}'",
            lambda: remove_address(ns, _link(ns, ifname)["index"], ifname, cidr),
        )


def _addr_del(ctx, action, rollback):
    """Remove an address; if a later action of the unit fails it is added again (while its
    link still exists)."""
    ns = ctx.netns(action["netns"])
    ifname, cidr = action["ifname"], action["address"]
    index = _link(ns, ifname)["index"]
    remove_address(ns, index, ifname, cidr)

    def put_back():
        msg = find_link(ns, ifname)
        if msg is not None and msg["index"] == index:
            add_address(ns, index, ifname, cidr)

    rollback.push(f"removing {cidr} from '{ifname}'", put_back)


def _route(ctx, action, rollback):
    """Replace or delete a route. What it changed is put back if a later action of the unit
    fails: a new route is deleted, a replaced one is written back as it was (``previous``), a
    deleted one is added again."""
    ns = ctx.netns(action["netns"])
    op = action["op"][len("route_") :]
    text = action.get("text") or action["route"]["dst"]

    def change(op, route, what):
        # A route the kernel dropped already (its device or its gateway's subnet went) is
        # not an error to delete. Returns False when there was nothing to delete.
        by_name = {name: index for index, name in link_names(ns).items()}
        ignore = (errno.ESRCH,) if op == "delete" else ()
        request = {"op": op, "route": route}
        done = ns.call(
            what,
            lambda: apply_route_action(ns.ipr, request, by_name) or True,
            ignore=ignore,
        )
        return bool(done)

    done = change(op, action["route"], f"{op} route {text}")
    if op == "replace" and action.get("new"):
        rollback.push(
            f"adding route {text}",
            lambda: change("delete", action["route"], f"delete route {text}"),
        )
    elif op == "replace" and action.get("previous"):
        previous = action["previous"]
        before = route_text(previous)
        rollback.push(
            f"replacing route {before}",
            lambda: change("replace", previous, f"putting back route {before}"),
        )
    elif op == "delete" and done:
        rollback.push(
            f"deleting route {text}",
            lambda: change("replace", action["route"], f"putting back route {text}"),
        )


OPS = {
    "netns_create": _netns_create,
    "netns_attach": _netns_attach,
    "netns_remove": _netns_remove,
    "loopback_up": _loopback_up,
    "bridge_add": _bridge_add,
    "bridge_set": _bridge_set,
    "veth_add": _veth_add,
    "vlan_create": _vlan_create,
    "macvlan_create": _macvlan_create,
    "macvlan_mode": _macvlan_mode,
    "link_set": _link_set,
    "link_del": _link_del,
    "addr_add": _addr_add,
    "addr_del": _addr_del,
    "route_replace": _route,
    "route_delete": _route,
}


def execute(ctx, action, rollback):
    """Carry out one planned action (``ctx`` is the runner's Context: its namespaces)."""
    OPS[action["op"]](ctx, action, rollback)
