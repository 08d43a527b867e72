# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The macvlan planner: a macvlan on a lower device, made directly inside its own namespace.

Kernel facts this follows: a macvlan's parent cannot be changed in place, so a difference fails
or, with ``recreate``, deletes and creates again. Its mode can change in place except to or from
``passthru``. The kernel's default mode is VEPA, ours is bridge (as Docker and CNI do). A
macvlan's MTU cannot exceed its lower device's. Pure: ``describe_link`` dicts (with ``lower``,
see ``netlink.lower_name``) in, actions out."""

from __future__ import annotations

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import ModuleFailure
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.link import (
    immutable_difference,
    plan_link_changes,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.namespace import netns_text

MACVLAN_MODE_NUMBERS = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
"""IFLA_MACVLAN_MODE values (include/uapi/linux/if_link.h, enum macvlan_mode)."""

MACVLAN_MODES = ("bridge", "private", "vepa", "passthru", "source")

_MODE_BY_NUMBER = {number: name for name, number in MACVLAN_MODE_NUMBERS.items()}


def macvlan_mode_name(value):
    """A macvlan mode as the kernel reports it (a number, or a name from pyroute2) -> name."""
    return _MODE_BY_NUMBER.get(value, value)


def macvlan_differences(mode, lower, have_link):
    """Immutable differences of an existing link named like a macvlan that should be in
    ``mode`` on ``lower``, as text (or None)."""
    if have_link["kind"] != "macvlan":
        return f"kind {have_link['kind'] or 'device'} instead of macvlan"
    diffs = []
    if have_link.get("lower") != lower:
        diffs.append(f"parent {have_link.get('lower') or 'unknown'} instead of {lower}")
    current = (have_link.get("kind_data") or {}).get("mode")
    if mode and current != mode and "passthru" in (current, mode):
        diffs.append(f"mode {current} instead of {mode} (passthru cannot be switched)")
    return ", ".join(diffs) or None


def plan_macvlan(plan, tracker, macvlan, current, lower, lower_netns, **options):
    """Append the actions that make ``macvlan`` (``name``, ``netns``, ``mode`` and the link
    attributes ``mtu``, ``mac``, ``addresses``, ``state``) exist on ``lower`` (a device of
    ``lower_netns``). ``current``: its link dict or None.

    ``options``: ``prefix`` (tracker keys), ``field`` (named in a conflict), ``recreate``,
    ``recreate_hint``, ``purge_addresses``, ``lower_recreated`` (the lower device is made
    again, which deletes the macvlans on it) and ``alias`` (the tag: a new macvlan gets it,
    an existing one is re-tagged)."""
    name, netns = macvlan["name"], macvlan["netns"]
    prefix = options.get("prefix", "")
    if current is not None and options.get("lower_recreated") and current.get("lower") == lower:
        current = None
    old = current
    if current is not None:
        differences = macvlan_differences(macvlan["mode"], lower, current)
        if differences:
            if not options.get("recreate"):
                raise immutable_difference(
                    options.get("field", "name"),
                    f"interface '{name}' in {netns_text(netns)}",
                    differences,
                    options.get("recreate_hint", True),
                )
            plan.add("link_del", ifname=name, netns=netns, reason=differences)
            tracker.add(prefix + "recreated", differences, None)
            current = None
    tracker.add(prefix + "parent", lower, (old or {}).get("lower"))
    mode_now = (old or {}).get("kind_data", {}).get("mode")
    if current is None:
        tag = {"alias": options["alias"]} if options.get("alias") else {}
        plan.add(
            "macvlan_create",
            ifname=name,
            netns=netns,
            lower=lower,
            lower_netns=lower_netns,
            mode=macvlan["mode"],
            **tag,
        )
        tracker.add(prefix + "mode", macvlan["mode"], mode_now)
    elif tracker.add(prefix + "mode", macvlan["mode"], mode_now):
        plan.add("macvlan_mode", ifname=name, netns=netns, mode=macvlan["mode"])
    attrs = {key: macvlan.get(key) for key in ("mtu", "mac", "addresses", "state")}
    attrs["alias"] = options.get("alias")
    plan_link_changes(
        plan,
        tracker,
        name,
        netns,
        attrs,
        current,
        options.get("purge_addresses", False),
        prefix=prefix,
    )


def plan_macvlan_absent(plan, tracker, macvlan, current, prefix, field):
    """Delete ``macvlan`` (``name``, ``netns``) if it exists; another kind there fails."""
    if current is not None and current["kind"] != "macvlan":
        raise ModuleFailure(
            f"{field}: '{macvlan['name']}' in {netns_text(macvlan['netns'])} is a "
            f"{current['kind'] or 'device'}, not a macvlan; it was left alone",
            field=field,
        )
    if tracker.add(prefix + "exists", False, current is not None):
        plan.add("link_del", ifname=macvlan["name"], netns=macvlan["netns"])
