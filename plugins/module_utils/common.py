# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic shared by every tenantnet.nsproxy module: validation and normalisation of user
input, the difference tracker, the plan, the rollback stack and errno sentences.

Nothing here talks to the kernel, so all of it is unit-tested without root. The netlink side
lives in ``netlink.py``. Module flow (see STYLE.md): want -> have -> plan -> apply.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re

OWNER_TAG = "tenantnet.nsproxy"
"""Interface alias (IFLA_IFALIAS) set on every link this collection creates."""

IFNAMSIZ = 15
"""Longest interface name the kernel accepts (IFNAMSIZ - 1)."""

NETNS_DIR = "/run/netns"
"""Where named network namespaces live (iproute2's convention)."""

MTU_MIN = 68
MTU_MAX = 65535


class ModuleFailure(Exception):
    """A failure to report with ``fail_json``: ``msg`` is a complete sentence for the user and
    ``extra`` is merged into the failed result (never a traceback)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


class ParamError(ModuleFailure):
    """Invalid user input, detected before anything is touched. The message starts with the
    field name (``field: what is wrong; allowed: ...``)."""

    def __init__(self, field, problem, **extra):
        super().__init__(f"{field}: {problem}", field=field, **extra)
        self.field = field


# -- validation and normalisation ------------------------------------------------------------

_BAD_IFNAME_CHARS = re.compile(r"[/:\s]")


def validate_ifname(value, field):
    """Return ``value`` if it is a valid Linux interface name (1-15 characters, none of ``/``,
    ``:`` or whitespace, not ``.``/``..``), else raise ParamError naming ``field``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ParamError(field, f"an interface name is required (1-{IFNAMSIZ} characters)")
    if len(value) > IFNAMSIZ:
        raise ParamError(
            field,
            f"interface name '{value}' has {len(value)} characters; "
            f"the kernel allows at most {IFNAMSIZ}",
        )
    if value in (".", "..") or _BAD_IFNAME_CHARS.search(value):
        raise ParamError(
            field,
            f"interface name '{value}' is not allowed: no '/', ':' or whitespace, not '.' or '..'",
        )
    return value


_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def normalize_mac(value, field):
    """Return a unicast MAC as lower-case ``aa:bb:cc:dd:ee:ff`` (accepts ``-`` or no separator),
    None for None; raise ParamError for anything else (multicast and all-zero included)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _MAC_RE.match(text):
        raise ParamError(field, f"'{value}' is not a MAC address; expected aa:bb:cc:dd:ee:ff")
    digits = re.sub(r"[:-]", "", text)
    octets = [digits[i : i + 2] for i in range(0, 12, 2)]
    if int(octets[0], 16) & 1:
        raise ParamError(field, f"'{value}' is a multicast MAC; a link needs a unicast MAC")
    if digits == "0" * 12:
        raise ParamError(field, f"'{value}' is the all-zero MAC; a link needs a unicast MAC")
    return ":".join(octets)


def normalize_cidr(value, field):
    """Return an interface address in canonical CIDR form (``10.0.0.2/24``, ``2001:db8::1/64``,
    IPv6 compressed); the prefix length is required. Raise ParamError naming ``field``."""
    text = str(value).strip() if value is not None else ""
    if "/" not in text:
        raise ParamError(
            field,
            f"'{value}' is not an address in CIDR form; "
            "expected e.g. 10.0.0.2/24 or 2001:db8::2/64",
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ParamError(
            field,
            f"'{value}' is not a valid CIDR address; expected e.g. 10.0.0.2/24 or 2001:db8::2/64",
        ) from None
    return str(iface)


def normalize_cidrs(values, field):
    """Normalise a list of CIDR addresses (None stays None): canonical form, duplicates
    dropped, user order kept. Each bad entry is reported as ``field[i]``."""
    if values is None:
        return None
    result = []
    for i, value in enumerate(values):
        cidr = normalize_cidr(value, f"{field}[{i}]")
        if cidr not in result:
            result.append(cidr)
    return result


def normalize_link_addresses(values, field):
    """Like ``normalize_cidrs`` for addresses to put on a link, but IPv6 link-local addresses
    (fe80::/10) are refused: the kernel makes and owns them, and they are never compared."""
    result = normalize_cidrs(values, field)
    for i, cidr in enumerate(result or []):
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 6 and iface.ip.is_link_local:
            raise ParamError(
                f"{field}[{i}]",
                f"'{cidr}' is an IPv6 link-local address; the kernel manages those, list "
                "global or unique-local addresses only",
            )
    return result


def cidr_sort_key(cidr):
    """Sort key for CIDR strings: IPv4 before IPv6, then by address and prefix."""
    iface = ipaddress.ip_interface(cidr)
    return (iface.version, int(iface.ip), iface.network.prefixlen)


def validate_mtu(value, field):
    """Return ``value`` as int if it is a plausible MTU (68-65535), None for None; else raise."""
    if value is None:
        return None
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise ParamError(
            field, f"'{value}' is not an integer; allowed: {MTU_MIN}-{MTU_MAX}"
        ) from None
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise ParamError(field, f"{mtu} is out of range; allowed: {MTU_MIN}-{MTU_MAX}")
    return mtu


def validate_int_range(value, field, low, high):
    """Return ``value`` as int if ``low <= value <= high`` (None stays None); else raise."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ParamError(field, f"'{value}' is not an integer; allowed: {low}-{high}") from None
    if not low <= number <= high:
        raise ParamError(field, f"{number} is out of range; allowed: {low}-{high}")
    return number


def netns_path(value, field="netns", netns_dir=NETNS_DIR):
    """Map a ``netns`` parameter to a filesystem path: None or ``""`` -> None (the namespace the
    module runs in), a plain name -> ``<netns_dir>/<name>``, an absolute path -> itself.
    Raise ParamError for relative paths and names with ``/``; does not check existence."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.startswith("/"):
        return os.path.normpath(text)
    if "/" in text or text in (".", "..") or any(c.isspace() for c in text):
        raise ParamError(
            field,
            f"'{value}' is neither a namespace name (no '/' or whitespace) nor an absolute path "
            "such as /proc/PID/ns/net or /var/run/docker/netns/ID",
        )
    return os.path.join(netns_dir, text)


# -- addresses ---------------------------------------------------------------------------------


def plan_addresses(want, have, purge):
    """Given wanted and current CIDR lists (normalised), return ``(to_add, to_remove)``.
    ``want`` None means "not managed": nothing to do. Without ``purge`` nothing is removed.
    Both lists come back sorted (IPv4 first) so plans are deterministic."""
    if want is None:
        return [], []
    have_set = set(have or [])
    want_set = set(want)
    to_add = sorted(want_set - have_set, key=cidr_sort_key)
    to_remove = sorted(have_set - want_set, key=cidr_sort_key) if purge else []
    return to_add, to_remove


def addresses_after(want, have, purge):
    """The address list the link will carry once ``plan_addresses`` is applied (sorted)."""
    to_add, to_remove = plan_addresses(want, have, purge)
    result = set(have or []) | set(to_add)
    result -= set(to_remove)
    return sorted(result, key=cidr_sort_key)


# -- errors ------------------------------------------------------------------------------------

_ERRNO_SENTENCES = {
    errno.EEXIST: "an object with that name or value already exists",
    errno.ENODEV: "the interface does not exist (it may have been removed or moved meanwhile)",
    errno.ENOENT: "the object does not exist",
    errno.EBUSY: "the device or resource is busy (in use by another object)",
    errno.EPERM: "operation not permitted: CAP_NET_ADMIN (root) is required",
    errno.EACCES: "permission denied: CAP_NET_ADMIN (root) is required",
    errno.EINVAL: "the kernel rejected a value as invalid",
    errno.ERANGE: "a value is out of the range the kernel accepts",
    errno.EOPNOTSUPP: "the kernel or this device does not support the operation",
    errno.EADDRNOTAVAIL: "the address is not available on this interface",
    errno.ENETUNREACH: "the gateway or destination is unreachable from any connected subnet",
    errno.ESRCH: "no such route or object",
    errno.EAFNOSUPPORT: "the address family is not supported (is IPv6 disabled?)",
    errno.ENOSPC: "no space left for the object (a kernel limit was reached)",
    errno.ENOBUFS: "the kernel ran out of netlink buffer space; retry",
    errno.EMSGSIZE: "the request was too large for the kernel",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EXDEV: "the operation would cross namespaces or devices, which is not allowed",
}


def errno_sentence(code, action=None, kernel_text=None):
    """Turn an errno (plus optional action such as ``"creating veth 'v0'"`` and the kernel's
    extended-ack text) into one readable sentence, e.g. ``"creating veth 'v0' failed: an
    object with that name already exists (EEXIST; kernel: ...)"``."""
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = errno.EIO
    name = "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, f"errno {code}")
    meaning = _ERRNO_SENTENCES.get(code) or os.strerror(code)
    detail = name
    text = str(kernel_text or "").strip()
    if text and text.lower() != os.strerror(code).lower():
        detail = f"{name}; kernel says: {text}"
    prefix = (f"{action} failed: ") if action else ""
    return f"{prefix}{meaning} ({detail})"


# -- difference tracker, plan, rollback --------------------------------------------------------


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
    as ``actions``."""

    def __init__(self):
        self.actions = []

    def add(self, op, **details):
        action = {"op": op}
        action.update(details)
        self.actions.append(action)
        return action

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


class Rollback:
    """A stack of undo steps for what this call created. ``push`` after each successful
    creation; on failure ``unwind`` runs them newest first and returns sentences for any undo
    step that failed itself (so the user learns what may be left over)."""

    def __init__(self):
        self._steps = []

    def push(self, description, undo):
        """Register ``undo()`` (a callable) to revert the step named by ``description``."""
        self._steps.append((description, undo))

    def __len__(self):
        return len(self._steps)

    def unwind(self):
        """Run every undo step newest first; never raises. Returns a list of failure texts."""
        failures = []
        while self._steps:
            description, undo = self._steps.pop()
            try:
                undo()
            except Exception as exc:
                text = getattr(exc, "msg", None) or str(exc)
                failures.append(f"undoing {description} failed: {text}")
        return failures

    def clear(self):
        """Forget every step (call once the whole plan succeeded)."""
        self._steps = []


def apply_plan(plan, step, rollback=None):
    """Run ``step(action)`` for every action of ``plan`` in order. If one raises ModuleFailure,
    unwind ``rollback`` and re-raise with the undo result appended (``rolled_back`` and
    ``leftovers`` in the failed result)."""
    rollback = rollback if rollback is not None else Rollback()
    try:
        for action in plan:
            step(action)
    except ModuleFailure as failure:
        undone = len(rollback)
        leftovers = rollback.unwind()
        msg = failure.msg
        if undone and not leftovers:
            msg += " Everything this call had created was removed again."
        elif leftovers:
            msg += " Cleanup was incomplete: " + "; ".join(leftovers)
        extra = dict(failure.extra)
        extra.update(rolled_back=undone, leftovers=leftovers, failed_action=action)
        raise ModuleFailure(msg, **extra) from None
    rollback.clear()


def build_result(module, plan, tracker, **objects):
    """The common result: ``changed`` (the plan is not empty), ``actions`` (the plan, also in
    check mode), ``diff`` (before/after of the keys the user set, only with --diff) and the
    resulting object(s) given as keyword arguments."""
    result = dict(changed=bool(plan), actions=list(plan.actions))
    if getattr(module, "_diff", False):
        result["diff"] = dict(before=tracker.before, after=tracker.after)
    result["differences"] = tracker.differences
    result.update(objects)
    return result


def run_module(module, body):
    """Call ``body()`` and ``exit_json`` its result dict; a ModuleFailure becomes ``fail_json``
    with its sentence (no traceback)."""
    try:
        result = body()
    except ModuleFailure as failure:
        module.fail_json(msg=failure.msg, **failure.extra)
    module.exit_json(**result)


# -- link attributes ---------------------------------------------------------------------------

LINK_ATTRS = ("mtu", "mac", "master", "state", "addresses")
"""Keys of ``want`` understood by ``plan_link_changes``."""


def plan_link_changes(plan, tracker, ifname, netns, want, have, purge_addresses=False, prefix=""):
    """Compare the common link attributes and append the actions that make ``have`` match.

    ``want`` may hold ``mtu``, ``mac``, ``master`` (bridge name, ``""`` = no master),
    ``state`` (``up``/``down``) and ``addresses`` (normalised CIDR list); a missing or None
    key is not managed. ``have`` is a ``describe_link`` dict, or None for a link this plan
    creates (then every wanted value is planned). Tracker keys get ``prefix`` (``peer.``).
    Actions, in order: ``link_set`` (mtu, mac, master), ``addr_del``, ``addr_add``,
    ``link_set`` (state), each with ``ifname`` and ``netns``."""
    have = have or {}
    attrs = {}
    for key in ("mtu", "mac"):
        if tracker.add(prefix + key, want.get(key), have.get(key)):
            attrs[key] = want[key]
    master = want.get("master")
    if tracker.add(prefix + "master", master, have.get("master") or ""):
        attrs["master"] = master
    if attrs:
        plan.add("link_set", ifname=ifname, netns=netns, **attrs)
    wanted_addresses = want.get("addresses")
    if wanted_addresses is not None:
        current = have.get("addresses") or []
        tracker.add(
            prefix + "addresses",
            addresses_after(wanted_addresses, current, purge_addresses),
            sorted(current, key=cidr_sort_key),
        )
        to_add, to_remove = plan_addresses(wanted_addresses, current, purge_addresses)
        for cidr in to_remove:
            plan.add("addr_del", ifname=ifname, netns=netns, address=cidr)
        for cidr in to_add:
            plan.add("addr_add", ifname=ifname, netns=netns, address=cidr)
    if tracker.add(prefix + "state", want.get("state"), have.get("state")):
        plan.add("link_set", ifname=ifname, netns=netns, state=want["state"])
