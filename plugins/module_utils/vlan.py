# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VLAN planner: an 802.1Q (or 802.1ad) subinterface of a parent NIC. Its id, protocol and
parent cannot be changed in place (the kernel's changelink ignores them silently), so a
difference fails or, with ``recreate``, deletes and creates again. Pure."""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import (
    immutable_difference,
    plan_link_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import IFNAMSIZ

VLAN_PROTOCOLS = {"802.1Q": 0x8100, "802.1ad": 0x88A8}
# be16 decoded either way round, depending on the pyroute2 version.
_PROTOCOL_BY_NUMBER = {0x8100: "802.1Q", 0x0081: "802.1Q", 0x88A8: "802.1ad", 0xA888: "802.1ad"}


def default_vlan_name(parent, vlan_id):
    """``<parent>.<id>``, with the parent part shortened so the name fits in 15 bytes (the
    kernel counts bytes: a non-ASCII parent name is cut at a whole character)."""
    suffix = f".{vlan_id}"
    room = IFNAMSIZ - len(suffix)
    head = parent.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return head + suffix


def vlan_protocol_name(value):
    """Kernel IFLA_VLAN_PROTOCOL value -> ``802.1Q`` / ``802.1ad`` (None stays None)."""
    if value is None:
        return None
    return _PROTOCOL_BY_NUMBER.get(value, hex(value))


def vlan_differences(want_vlan, parent, have_vlan):
    """Immutable differences of an existing link named like the VLAN, as text (or None).
    ``have_vlan["lower"]`` is the name of its parent (see ``netlink.lower_name``)."""
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


def plan_vlan(plan, tracker, vlan, parent, netns, have_vlan, recreate, **options):
    """Append the actions that make the subinterface ``vlan`` (``name``, ``id``, ``protocol``,
    ``mtu``) on ``parent`` in ``netns`` exist and be up. Returns True when an existing one is
    deleted and made again (the links on top of it go with it).

    ``options``: ``field`` (named in a conflict, default ``vlan_id``), ``recreate_hint``
    (whether the conflict suggests ``recreate``), ``state`` (``up``, or None to leave it
    alone) and ``alias`` (the tag of a new subinterface, default the collection's)."""
    field = options.get("field", "vlan_id")
    prefix = f"vlan {vlan['name']}."
    old = have_vlan
    recreated = False
    if have_vlan is not None:
        differences = vlan_differences(vlan, parent, have_vlan)
        if differences:
            if not recreate:
                raise immutable_difference(
                    field,
                    f"interface '{vlan['name']}'",
                    differences,
                    options.get("recreate_hint", True),
                )
            plan.add("link_del", ifname=vlan["name"], netns=netns, reason=differences)
            tracker.add(prefix + "recreated", differences, None)
            have_vlan = None
            recreated = True
    tracker.add(prefix + "id", vlan["id"], (old or {}).get("kind_data", {}).get("id"))
    tracker.add(prefix + "parent", parent, (old or {}).get("lower"))
    if have_vlan is None:
        tag = {"alias": options["alias"]} if options.get("alias") else {}
        plan.add(
            "vlan_create",
            ifname=vlan["name"],
            netns=netns,
            parent=parent,
            vlan_id=vlan["id"],
            protocol=vlan["protocol"],
            **tag,
        )
    attrs = {"mtu": vlan["mtu"], "state": options.get("state", "up")}
    plan_link_changes(plan, tracker, vlan["name"], netns, attrs, have_vlan, prefix=prefix)
    return recreated


def plan_vlan_absent(plan, tracker, vlan, netns, current):
    """Delete subinterface ``vlan`` when this collection created it. Returns True when it is
    kept because it is someone else's (Docker's ``eth0.N``, the distribution's config...):
    deleting it would take every other user of the VLAN down with it."""
    if current is not None and current["kind"] != "vlan":
        raise ModuleFailure(
            f"vlan_name: '{vlan['name']}' is a {current['kind'] or 'device'}, not a VLAN; "
            "it was left alone",
            field="vlan_name",
        )
    if current is not None and not current.get("owned"):
        tracker.add(f"vlan {vlan['name']}.exists", True, True)
        return True
    if tracker.add(f"vlan {vlan['name']}.exists", False, current is not None):
        plan.add("link_del", ifname=vlan["name"], netns=netns)
    return False
