# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The veth planner: a veth pair, each end in its namespace with its own link attributes. The
peer of a veth cannot be changed in place: another pairing fails or, with ``recreate``, is
deleted and made again. Pure: ``describe_link`` dicts and the pairing (``netlink.veth_paired``)
in, actions out."""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import (
    plan_link_absent,
    plan_link_changes,
)


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


def plan_veth(plan, tracker, want, have, labels):
    """Append the actions that make the pair ``want["name"]`` (in ``netns``) <->
    ``want["peer"]`` (in ``peer_netns``) what is wanted.

    ``want``: ``name``, ``peer``, ``netns``, ``peer_netns``, ``state``, ``recreate``,
    ``purge_addresses``, ``end`` and ``peer_end`` (link attributes, see ``plan_link_changes``)
    and optionally ``alias`` (the tag the new pair gets, default the collection's). ``have``:
    ``end``, ``peer_end`` (link dicts or None) and ``paired``. ``labels``: the two namespaces
    as text, for messages."""
    end, peer_end = have["end"], have["peer_end"]
    if want["state"] == "absent":
        plan_link_absent(plan, tracker, "veth", want, end, labels[0])
        return
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
        tag = {"alias": want["alias"]} if want.get("alias") else {}
        plan.add(
            "veth_add",
            ifname=want["name"],
            netns=want["netns"],
            peer=want["peer"],
            peer_netns=want["peer_netns"],
            **tag,
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
