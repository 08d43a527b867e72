# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The namespace planner: a named network namespace (created, attached to another namespace,
or only its name removed) and its loopback interface. Pure: the state of the name (see
``netlink.namespace_state``) and the resolved attach target in, actions out."""

from __future__ import annotations

NEW_NAMESPACE = dict(exists=False, live=False, inode=None, loopback=None)
"""The state of a name that does not exist."""


def plan_namespace(plan, tracker, want, have, target=None):
    """Append the actions that make the name ``want["path"]`` what is wanted.

    ``want``: ``path``, ``state`` (present/absent), ``loopback_up`` (bool). ``have``: the name's
    state (``exists``, ``live``, ``inode``, ``loopback``). ``target``: None (a new namespace)
    or the namespace to attach (``source``, ``inode`` and its ``loopback`` state; with
    ``planned``, one that does not exist yet in check mode: attached in any case). Actions:
    ``netns_remove`` (the name only; a stale file, or a name pointing elsewhere),
    ``netns_create``, ``netns_attach``, ``loopback_up``."""
    path = want["path"]
    if want["state"] == "absent":
        if tracker.add("exists", False, have["exists"]):
            plan.add("netns_remove", path=path)
        return
    tracker.add("exists", True, have["exists"])
    loopback = have["loopback"]
    if target is None:
        if not have["live"]:
            if have["exists"]:
                plan.add("netns_remove", path=path, reason="stale name without a namespace")
            plan.add("netns_create", path=path)
            loopback = "down"
    else:
        tracker.add("inode", target["inode"], have["inode"])
        if target.get("planned") or have["inode"] != target["inode"]:
            if have["exists"]:
                reason = (
                    "the name points at another namespace"
                    if have["live"]
                    else "stale name without a namespace"
                )
                plan.add("netns_remove", path=path, reason=reason)
            plan.add("netns_attach", path=path, source=target["source"])
            loopback = target.get("loopback")
    if want["loopback_up"]:
        tracker.add("loopback", "up", have["loopback"])
        if loopback != "up":
            plan.add("loopback_up", path=path)


def netns_text(spec):
    """A namespace as the user gave it, for sentences: ``the host namespace`` or
    ``netns 't1'`` (the same words as ``netlink.Netns.label``)."""
    return f"netns '{spec}'" if spec else "the host namespace"
