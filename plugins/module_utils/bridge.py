# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bridge planner: a Linux bridge, its options (STP, VLAN filtering, default PVID), its
link attributes and its port set. Pure: ``bridge_view`` dicts in, actions out."""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import (
    plan_link_absent,
    plan_link_changes,
)

BRIDGE_OPTIONS = ("stp", "vlan_filtering", "default_pvid")
"""Bridge options a plan may carry in ``bridge_add``/``bridge_set`` (see the executor)."""


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


def not_a_bridge(field, name, label, kind, hint=""):
    """The failure for a name that exists with another kind."""
    return ModuleFailure(
        f"{field}: '{name}' already exists in {label} as a {kind or 'plain device'}, not a "
        f"bridge.{hint}"
    )


def plan_bridge(plan, tracker, want, have, label, field="name"):
    """Append the actions that make bridge ``want["name"]`` in ``want["netns"]`` what is wanted.

    ``want``: ``name``, ``netns``, ``state``, ``recreate``, ``options`` (stp, vlan_filtering,
    default_pvid; None = leave alone), ``link`` (see ``plan_link_changes``),
    ``purge_addresses``, ``ports`` (None = not managed) and ``purge_ports``. ``have``: a
    ``bridge_view`` or None. Another kind under the name fails (naming ``field``) unless
    ``recreate``."""
    name, netns = want["name"], want["netns"]
    if want["state"] == "absent":
        plan_link_absent(plan, tracker, "bridge", want, have, label)
        return
    if have is not None and have["kind"] != "bridge":
        if not want["recreate"]:
            raise not_a_bridge(
                field,
                name,
                label,
                have["kind"],
                " Set recreate: true to delete it and create the bridge.",
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
