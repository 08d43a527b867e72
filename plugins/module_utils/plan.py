# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of a call and the difference tracker behind ``--diff``: what a module will do (an
ordered list of JSON-serialisable actions, the same in check mode) and which of the options the
user set differ from the system. Pure: nothing here talks to the kernel."""

from __future__ import annotations


def _same(want, have):
    if isinstance(want, list) and isinstance(have, list):
        return sorted(map(str, want)) == sorted(map(str, have))
    return want == have


class DiffTracker:
    """Records ``(key, want, have)`` for the keys the user set (``want`` None = not set, so
    not compared; False, 0 and [] are compared). Lists compare as sets. ``before``/``after``
    hold only recorded keys, ready for Ansible's ``diff``."""

    def __init__(self):
        self._entries = []

    def add(self, key, want, have, same=None):
        """Compare one key; return True if it differs. ``same(want, have)`` may override the
        default comparison (lists as sets, everything else with ==)."""
        if want is None:
            return False
        differs = not (same or _same)(want, have)
        self._entries.append((key, want, have, differs))
        return differs

    def differs(self, key):
        """Whether ``key`` was recorded as different."""
        return any(k == key and d for k, _w, _h, d in self._entries)

    @property
    def differences(self):
        """Keys whose wanted value differs from the current one, in recording order."""
        return [k for k, _w, _h, d in self._entries if d]

    @property
    def changed(self):
        return bool(self.differences)

    @property
    def before(self):
        return dict((k, h) for k, _w, h, _d in self._entries)

    @property
    def after(self):
        return dict((k, w) for k, w, _h, _d in self._entries)


class Plan:
    """The ordered list of actions a call will perform; computed identically in check mode.
    Each action is a dict ``{"op": ..., ...details}`` (JSON-serialisable), returned to the user
    as ``actions``. ``begin(**tags)`` starts a unit (one tenant of many): a failure undoes only
    what its own unit created, and the failed result carries the unit's tags."""

    def __init__(self):
        self.actions = []
        self._units = []  # (index of the unit's first action, tags)

    def add(self, op, **details):
        action = {"op": op}
        action.update(details)
        self.actions.append(action)
        return action

    def begin(self, **tags):
        """Start a new unit at the next action; ``tags`` (e.g. ``tenant="acme"``) go into the
        failed result when one of its actions fails."""
        self._units.append((len(self.actions), tags))

    def units(self):
        """``(tags, actions)`` per unit, in order; actions before the first ``begin`` form a
        unit without tags."""
        marks = {}
        for start, tags in self._units:
            marks[start] = tags  # a later begin() at the same action replaces an empty unit
        marks.setdefault(0, {})
        starts = sorted(marks)
        result = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(self.actions)
            if end > start:
                result.append((marks[start], self.actions[start:end]))
        return result

    def ops(self):
        """Just the op names, in order (handy in tests)."""
        return [a["op"] for a in self.actions]

    def __bool__(self):
        return bool(self.actions)

    __nonzero__ = __bool__

    def __len__(self):
        return len(self.actions)

    def __iter__(self):
        return iter(self.actions)


def _where(action):
    netns = action.get("netns")
    return f" in {netns}" if netns else ""


def _settings(action, skip=("op", "ifname", "netns", "reason")):
    return ", ".join(f"{key}={value}" for key, value in action.items() if key not in skip)


_TEXTS = {
    "netns_create": lambda a: f"create netns {a['path']}",
    "netns_attach": lambda a: f"attach {a['path']} to {a['source']}",
    "netns_remove": lambda a: f"remove the name {a['path']}",
    "loopback_up": lambda a: f"set lo up in {a['path']}",
    "bridge_add": lambda a: f"create bridge {a['ifname']}{_where(a)}",
    "bridge_set": lambda a: f"set {_settings(a)} on bridge {a['ifname']}{_where(a)}",
    "veth_add": lambda a: (
        f"create veth {a['ifname']}{_where(a)} <-> {a['peer']} in {a['peer_netns'] or 'host'}"
    ),
    "vlan_create": lambda a: (
        f"create VLAN {a['ifname']} (id {a['vlan_id']} on {a['parent']}){_where(a)}"
    ),
    "macvlan_create": lambda a: f"create macvlan {a['ifname']}{_where(a)} on {a['lower']}",
    "macvlan_mode": lambda a: f"set macvlan mode {a['mode']} on {a['ifname']}{_where(a)}",
    "link_set": lambda a: f"set {_settings(a)} on {a['ifname']}{_where(a)}",
    "link_del": lambda a: f"delete {a['ifname']}{_where(a)}",
    "addr_add": lambda a: f"add {a['address']} to {a['ifname']}{_where(a)}",
    "addr_del": lambda a: f"remove {a['address']} from {a['ifname']}{_where(a)}",
    "route_replace": lambda a: f"replace route {a['text']}{_where(a)}",
    "route_delete": lambda a: f"delete route {a['text']}{_where(a)}",
}


def action_text(action):
    """One line saying what a planned action does (``add 10.0.0.250/24 to eth0 in acme``),
    with its reason when it has one."""
    describe = _TEXTS.get(action["op"])
    text = describe(action) if describe else _settings(action, skip=("reason",))
    return f"{text} ({action['reason']})" if action.get("reason") else text
