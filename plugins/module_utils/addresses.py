# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The address planner: which interface addresses to add and remove so that a link carries
the wanted list (exactly, with ``purge``). Pure: canonical CIDR strings in, actions out."""

from __future__ import annotations

import ipaddress

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import cidr_sort_key


def _replaced(want, have):
    """Current IPv6 addresses that a wanted one replaces: same address, another prefix length.
    The kernel keys an IPv6 address by the address alone, so the old one must go first."""
    wanted_v6 = set()
    for cidr in want:
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 6:
            wanted_v6.add(iface.ip)
    replaced = set()
    for cidr in have:
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 6 and iface.ip in wanted_v6 and cidr not in want:
            replaced.add(cidr)
    return replaced


def plan_addresses(want, have, purge):
    """Given wanted and current CIDR lists (normalised), return ``(to_add, to_remove)``.
    ``want`` None means "not managed": nothing to do. Without ``purge`` nothing is removed,
    except an IPv6 address the kernel holds under another prefix length than the wanted one
    (it is replaced: removed, then added with the wanted prefix). Both lists come back sorted
    (IPv4 first) so plans are deterministic."""
    if want is None:
        return [], []
    have_set = set(have or [])
    want_set = set(want)
    to_add = sorted(want_set - have_set, key=cidr_sort_key)
    removed = (have_set - want_set) if purge else _replaced(want_set, have_set)
    to_remove = sorted(removed, key=cidr_sort_key)
    return to_add, to_remove


def addresses_after(want, have, purge):
    """The address list the link will carry once ``plan_addresses`` is applied (sorted)."""
    to_add, to_remove = plan_addresses(want, have, purge)
    result = set(have or []) | set(to_add)
    result -= set(to_remove)
    return sorted(result, key=cidr_sort_key)


def plan_address_changes(plan, tracker, ifname, netns, want, have, purge, key="addresses"):
    """Record ``key`` (before/after) on ``tracker`` and append ``addr_del`` then ``addr_add``
    actions for link ``ifname`` in ``netns``. ``want`` None: addresses are not managed."""
    if want is None:
        return
    current = have or []
    tracker.add(key, addresses_after(want, current, purge), sorted(current, key=cidr_sort_key))
    to_add, to_remove = plan_addresses(want, current, purge)
    for cidr in to_remove:
        plan.add("addr_del", ifname=ifname, netns=netns, address=cidr)
    for cidr in to_add:
        plan.add("addr_add", ifname=ifname, netns=netns, address=cidr)
