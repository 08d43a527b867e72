# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attributes every link has (MTU, MAC, master, admin state, addresses, alias), planned the
same way for veths, bridges, VLANs and macvlans. Pure: ``describe_link`` dicts in, actions out.

A value the user declared is applied explicitly when the link is created, even if it equals
what the kernel would pick, so that the kernel treats it as chosen (a bridge keeps an MTU set
that way when ports with another MTU join: see ``netlink.set_mtu``)."""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.addresses import (
    plan_address_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure

LINK_ATTRS = ("mtu", "mac", "master", "state", "addresses", "alias")
"""Keys of ``want`` understood by ``plan_link_changes``."""


def plan_link_changes(plan, tracker, ifname, netns, want, have, purge_addresses=False, prefix=""):
    """Compare the common link attributes and append the actions that make ``have`` match.

    ``want`` may hold ``mtu``, ``mac``, ``master`` (bridge name, ``""`` = no master),
    ``state`` (``up``/``down``), ``addresses`` (normalised CIDR list) and ``alias`` (the
    ownership tag); a missing or None key is not managed. ``have`` is a ``describe_link``
    dict, or None for a link this plan creates (then every wanted value is planned). Tracker
    keys get ``prefix`` (``peer.``). Actions, in order: ``link_set`` (mtu, mac, master,
    ifalias), ``addr_del``, ``addr_add``, ``link_set`` (state), each with ``ifname`` and
    ``netns``."""
    have = have or {}
    attrs = {}
    for key in ("mtu", "mac"):
        if tracker.add(prefix + key, want.get(key), have.get(key)):
            attrs[key] = want[key]
    master = want.get("master")
    if tracker.add(prefix + "master", master, have.get("master") or ""):
        attrs["master"] = master
    if have and tracker.add(prefix + "alias", want.get("alias"), have.get("alias")):
        attrs["ifalias"] = want["alias"]
    if attrs:
        plan.add("link_set", ifname=ifname, netns=netns, **attrs)
    plan_address_changes(
        plan,
        tracker,
        ifname,
        netns,
        want.get("addresses"),
        have.get("addresses"),
        purge_addresses,
        prefix + "addresses",
    )
    if tracker.add(prefix + "state", want.get("state"), have.get("state")):
        plan.add("link_set", ifname=ifname, netns=netns, state=want["state"])


def immutable_difference(field, what, differences, recreate_hint=True):
    """The failure for an attribute the kernel cannot change in place (a VLAN's id or parent, a
    macvlan's parent, a veth's peer): ``field`` first, what differs, and how to proceed."""
    hint = " Set recreate: true to delete and create it again." if recreate_hint else ""
    return ModuleFailure(
        f"{field}: {what} exists with {differences}, which cannot be changed in place.{hint}",
        field=field,
    )


def plan_link_absent(plan, tracker, kind, want, have, label):
    """``state: absent`` of a link of ``kind``: delete ``want["name"]`` (in ``want["netns"]``,
    ``label`` in messages) if it exists; another kind under that name fails and stays."""
    if have is None:
        return
    if have["kind"] != kind:
        raise ModuleFailure(
            f"name: '{want['name']}' in {label} is a {have['kind'] or 'plain device'}, not a "
            f"{kind}; not deleting it"
        )
    tracker.add("present", False, True)
    plan.add("link_del", ifname=want["name"], netns=want["netns"])
