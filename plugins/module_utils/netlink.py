# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one netlink layer of tenantnet.nsproxy: every module talks to the kernel through here.

Works with pyroute2 0.7.x (Debian 12's python3-pyroute2) and 0.9.x (PyPI). Namespaces are opened
the same way on both: open the namespace file read-only (so nothing can ever be created by
accident), ``setns`` into it only long enough to create the netlink socket, and return. The
socket keeps the namespace it was made in; the fd of the namespace stays open so it can be
passed as ``net_ns_fd`` (the 0.7 ``NetNS`` proxy process and the 0.9 ``flags=O_CREAT`` default
are both avoided).

Every kernel error becomes ModuleFailure with a sentence (see ``errors.errno_sentence``).

A namespace that does not exist yet (check mode, or one the call itself creates) is a
``PlannedNetns``: every read finds it empty, so the planners predict what a real run does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import traceback
import uuid

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.errors import (
    ModuleFailure,
    ParamError,
    errno_sentence,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.macvlan import macvlan_mode_name
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.ownership import (
    OWNER_TAG,
    is_owned,
)
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.routes import read_routes
from ansible_collections.tenantnet.nsproxy.plugins.module_utils.validation import (
    MTU_MIN,
    NETNS_DIR,
    cidr_sort_key,
    netns_path,
)

try:
    from pyroute2 import IPRoute
    from pyroute2 import netns as pyroute2_netns
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except Exception:
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
    IPRoute = None
    pyroute2_netns = None

    class NetlinkError(Exception):
        """Placeholder so ``except NetlinkError`` works without pyroute2."""

        code = 0

    class NetlinkDumpInterrupted(NetlinkError):
        """Placeholder, see NetlinkError."""


CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
IFF_UP = 1
SELF_NETNS = "/proc/self/ns/net"
DUMP_RETRIES = 3


def pyroute2_version():
    """The installed pyroute2 version string, or None."""
    try:
        from importlib.metadata import version

        return version("pyroute2")
    except Exception:
        return None


def require_pyroute2(module):
    """Fail the module with ``missing_required_lib('pyroute2')`` if pyroute2 cannot be imported.
    Call it first thing in ``main()``."""
    if not HAS_PYROUTE2:
        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(
            msg=missing_required_lib("pyroute2 (0.7 or later)"),
            exception=PYROUTE2_IMPORT_ERROR,
        )


# -- namespaces ------------------------------------------------------------------------------

_LIBC = []


def _libc():
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _setns(fd):
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _nsfs_dev():
    return os.stat(SELF_NETNS).st_dev


def is_netns_file(path):
    """True if ``path`` is a live namespace (an nsfs inode, e.g. a bind mount under /run/netns or
    /proc/PID/ns/net); False for a missing path or a plain leftover file (a stale name)."""
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except OSError:
        return False


def netns_inode(path):
    """Inode number of the namespace at ``path`` (identifies it), or None if it is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino if st.st_dev == _nsfs_dev() else None


class Netns:
    """An open network namespace. ``ipr`` is a pyroute2 IPRoute whose socket lives inside it,
    ``fd`` an open fd of the namespace (use it as ``net_ns_fd``), ``inode`` identifies it,
    ``spec`` is the user's value (None = the namespace the module runs in). Close it (or use it
    as a context manager) when done."""

    def __init__(self, spec, path, field):
        self.spec = spec
        self.path = path
        self.field = field
        self.fd = None
        self.ipr = None
        self.inode = None

    planned = False

    @property
    def label(self):
        """Human text for messages: ``the host namespace`` or ``netns 'blue'``."""
        return "the host namespace" if self.spec in (None, "") else f"netns '{self.spec}'"

    def same_as(self, other):
        """True if both handles point at the same namespace (compares inodes)."""
        return self.inode == other.inode

    def call(self, action, method, *args, ignore=(), **kwargs):
        """Run ``method(*args, **kwargs)`` (an IPRoute method); a NetlinkError or OSError becomes
        ModuleFailure whose message reads ``<action> in <label> failed: <sentence>``, except the
        errnos in ``ignore`` (then None is returned). A dump interrupted by concurrent changes
        (busy Docker hosts) is retried a few times."""
        try:
            for _attempt in range(DUMP_RETRIES):
                try:
                    return method(*args, **kwargs)
                except NetlinkDumpInterrupted:
                    continue
            return method(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in ignore:
                return None
            text = exc.args[1] if len(exc.args) > 1 else None
            raise ModuleFailure(
                errno_sentence(exc.code, f"{action} in {self.label}", text),
                errno=exc.code,
            ) from None
        except OSError as exc:
            raise ModuleFailure(
                errno_sentence(exc.errno, f"{action} in {self.label}", exc.strerror),
                errno=exc.errno,
            ) from None

    def close(self):
        if self.ipr is not None:
            with contextlib.suppress(Exception):
                self.ipr.close()
            self.ipr = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_netns(spec, field="netns", netns_dir=NETNS_DIR):
    """Open the namespace named by ``spec`` (None/"" = the module's own, a name under
    ``netns_dir``, or an absolute path such as /proc/PID/ns/net or /var/run/docker/netns/ID)
    and return a Netns. Never creates anything. A missing or stale namespace raises ParamError
    naming ``field``."""
    if not HAS_PYROUTE2:
        raise ModuleFailure("pyroute2 is required but could not be imported")
    path = netns_path(spec, field, netns_dir)
    handle = Netns(spec, path, field)
    if path is None:
        handle.fd = os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        handle.inode = os.fstat(handle.fd).st_ino
        try:
            handle.ipr = IPRoute(ext_ack=True)
        except Exception:
            handle.close()
            raise
        return handle
    try:
        handle.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NetnsMissing(
                field,
                f"network namespace '{spec}' does not exist ({path} not found); "
                "create or attach it first, e.g. with tenantnet.nsproxy.netns",
                path=path,
            ) from None
        raise ParamError(field, f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(handle.fd)
    if st.st_dev != _nsfs_dev():
        handle.close()
        raise NetnsMissing(
            field,
            f"{path} exists but is not a network namespace (a stale name whose namespace "
            "is gone?); remove it or attach it again with tenantnet.nsproxy.netns",
            path=path,
        )
    handle.inode = st.st_ino
    own = os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(handle.fd)
        except OSError as exc:
            handle.close()
            if exc.errno == errno.EINVAL:
                raise ParamError(field, f"{path} is a namespace but not a network one") from None
            raise ModuleFailure(
                errno_sentence(exc.errno, f"entering network namespace {path}")
            ) from None
        try:
            handle.ipr = IPRoute(ext_ack=True)
        finally:
            # Always return at once: only the socket belongs in the target namespace.
            _setns(own)
    except Exception:
        handle.close()
        raise
    finally:
        os.close(own)
    return handle


class NetnsMissing(ParamError):
    """The namespace named by a parameter does not exist (or is a stale name) at ``path``."""

    def __init__(self, field, problem, path):
        super().__init__(field, problem)
        self.path = path


class _EmptyNamespace:
    """The netlink side of a namespace that does not exist yet: every dump is empty, a lookup
    finds nothing. Changing anything in it is refused: only a real run changes, and by then
    the namespace exists (``NetnsSet.get`` opens it again)."""

    def __init__(self, label):
        self.label = label

    def get_links(self, *args, **kwargs):
        return []

    def get_addr(self, *args, **kwargs):
        return []

    def get_routes(self, *args, **kwargs):
        return []

    def link_lookup(self, *args, **kwargs):
        return []

    def get_netnsid(self, *args, **kwargs):
        return None

    def link(self, command, *args, **kwargs):
        if command == "get":
            raise NetlinkError(errno.ENODEV, "no such device")
        raise ModuleFailure(f"{self.label} does not exist yet; nothing can be changed in it")

    def close(self):
        pass


class PlannedNetns(Netns):
    """A namespace that does not exist yet: in check mode (an earlier task creates it), or one
    this call's plan creates. It reads as a new, empty namespace."""

    planned = True

    def __init__(self, spec, path, field):
        super().__init__(spec, path, field)
        self.ipr = _EmptyNamespace(self.label)

    def same_as(self, other):
        return self.path == other.path


class NetnsSet:
    """Opens each distinct namespace once and closes them all at the end (a module may touch
    two: ``netns`` and ``peer_netns``). ``get(spec, field)`` returns a Netns. With
    ``planning`` (check mode) a missing namespace is a ``PlannedNetns`` plus a warning in
    ``warnings``, instead of a ParamError."""

    def __init__(self, netns_dir=NETNS_DIR, planning=False):
        self.netns_dir = netns_dir
        self.planning = planning
        self.warnings = []
        self._open = {}

    def get(self, spec, field="netns", created_here=False):
        """The namespace ``spec``; with ``created_here`` (the caller plans to create it) or in
        planning mode, a ``PlannedNetns`` when it does not exist. Planned ones are not kept:
        after the plan created the namespace, the next ``get`` opens it."""
        key = netns_path(spec, field, self.netns_dir)
        if key in self._open:
            return self._open[key]
        try:
            handle = open_netns(spec, field, self.netns_dir)
        except NetnsMissing as missing:
            if not (self.planning or created_here):
                raise
            if not created_here:
                warning = (
                    f"{field}: network namespace '{spec}' does not exist ({missing.path}); "
                    "check mode assumes an earlier task creates it and predicts the changes "
                    "in a new, empty namespace"
                )
                if warning not in self.warnings:
                    self.warnings.append(warning)
            return PlannedNetns(spec, key, field)
        self._open[key] = handle
        return handle

    def close(self):
        for handle in self._open.values():
            handle.close()
        self._open = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ensure_netns_dir(netns_dir):
    """Make ``netns_dir`` a shared mount point, as iproute2 does, so names propagate."""
    libc = _libc()
    if not os.path.isdir(netns_dir):
        os.makedirs(netns_dir, 0o755)
    target = netns_dir.encode()
    if libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if libc.mount(target, target, b"none", MS_BIND | MS_REC, None) != 0:
        code = ctypes.get_errno()
        raise ModuleFailure(errno_sentence(code, f"making {netns_dir} a mount point"))
    if libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None) != 0:
        code = ctypes.get_errno()
        raise ModuleFailure(errno_sentence(code, f"sharing the mount {netns_dir}"))


def create_named_netns(path):
    """Create a new, empty network namespace bound at ``path`` (fails if ``path`` exists)."""
    try:
        pyroute2_netns.create(path)
    except OSError as exc:
        raise ModuleFailure(
            errno_sentence(exc.errno, f"creating network namespace {path}", exc.strerror)
        ) from None


def attach_named_netns(path, source):
    """Give the existing namespace at ``source`` (/proc/PID/ns/net, a Docker SandboxKey...) the
    name ``path`` with a bind mount, as ``ip netns attach`` does. Nothing is left on failure."""
    _ensure_netns_dir(os.path.dirname(path))
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except OSError as exc:
        raise ModuleFailure(
            errno_sentence(exc.errno, f"creating the mount point {path}", exc.strerror)
        ) from None
    if _libc().mount(source.encode(), path.encode(), b"none", MS_BIND, None) != 0:
        code = ctypes.get_errno()
        os.unlink(path)
        raise ModuleFailure(errno_sentence(code, f"binding {source} to {path}"))


def remove_named_netns(path):
    """Remove the name ``path``: unmount it (lazily) and delete the file. The namespace itself
    lives on while a process (a container) or another name still uses it."""
    _libc().umount2(path.encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise ModuleFailure(
                errno_sentence(exc.errno, f"removing {path}", exc.strerror)
            ) from None


# -- links -------------------------------------------------------------------------------------


def temp_ifname(prefix="tn"):
    """A random interface name (<= 15 chars) used while a link is created in its target
    namespace, before it is renamed to its final name."""
    return (prefix + uuid.uuid4().hex)[:15]


def find_link(ns, name):
    """The raw pyroute2 link message for ``name`` in ``ns``, or None if there is none."""
    indexes = ns.call(f"looking up '{name}'", ns.ipr.link_lookup, ifname=name)
    if not indexes:
        return None
    try:
        return ns.ipr.link("get", index=indexes[0])[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise ModuleFailure(errno_sentence(exc.code, f"reading '{name}' in {ns.label}")) from None


def find_link_by_index(ns, index):
    """The raw link message with ``index`` in ``ns``, or None."""
    try:
        return ns.ipr.link("get", index=index)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise ModuleFailure(
            errno_sentence(exc.code, f"reading link #{index} in {ns.label}")
        ) from None


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def link_kind(msg):
    """The link kind (``veth``, ``bridge``, ``macvlan``, ...) or None for plain devices."""
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_kind_data(msg):
    """Kind-specific attributes as a plain dict with short lower-case keys: IFLA_BR_STP_STATE ->
    ``stp_state``, IFLA_MACVLAN_MODE -> ``mode``, IFLA_VLAN_ID -> ``id``. Empty if none."""
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    result = {}
    if data is None or not hasattr(data, "get"):
        return result
    for nla in data.get("attrs", []):
        name, value = nla[0], nla[1]
        parts = name.split("_", 2)
        key = parts[2].lower() if len(parts) == 3 else name.lower()
        if isinstance(value, (bool, int, float, str)) or value is None:
            result[key] = value
    return result


def _address_of(msg):
    """The canonical CIDR of an address message; None for IPv6 link-local (fe80::/10)
    addresses, which the kernel manages."""
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not address:
        return None
    iface = ipaddress.ip_interface("{}/{}".format(address, msg["prefixlen"]))
    if iface.version == 6 and iface.ip.is_link_local:
        return None
    return str(iface)


def read_addresses(ns, index):
    """Addresses of link ``index`` as canonical CIDR strings, sorted IPv4 first. IPv6
    link-local (fe80::/10) addresses are left out: the kernel manages them."""
    result = set()
    for msg in ns.call("reading addresses", ns.ipr.get_addr, index=index):
        cidr = _address_of(msg) if msg.get("index") == index else None
        if cidr:
            result.add(cidr)
    return sorted(result, key=cidr_sort_key)


def _link_view(ns, msg, master, addresses):
    mac = msg.get_attr("IFLA_ADDRESS")
    alias = msg.get_attr("IFLA_IFALIAS")
    data = dict((k, _plain(v)) for k, v in link_kind_data(msg).items())
    if "mode" in data and link_kind(msg) == "macvlan":
        data["mode"] = macvlan_mode_name(data["mode"])
    return {
        "name": msg.get_attr("IFLA_IFNAME"),
        "ifindex": msg["index"],
        "kind": link_kind(msg),
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": mac.lower() if mac else None,
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "state": "up" if msg["flags"] & IFF_UP else "down",
        "addresses": addresses,
        "master": master,
        "alias": alias,
        "owned": is_owned(alias),
        "netns": ns.spec or None,
        "link_index": msg.get_attr("IFLA_LINK"),
        "link_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        "kind_data": data,
    }


def describe_link(ns, msg):
    """Normalise a link message into the JSON-serialisable dict every module returns:
    name, ifindex, kind, mtu, mac (lower case), operstate, state (admin up/down), addresses
    (CIDR), master (name), alias, owned (alias is a collection tag), netns, link_index and
    link_netnsid (peer/parent reference) and kind_data (a macvlan's mode by name)."""
    master_index = msg.get_attr("IFLA_MASTER")
    master = None
    if master_index:
        master_msg = find_link_by_index(ns, master_index)
        master = master_msg.get_attr("IFLA_IFNAME") if master_msg is not None else None
    return _link_view(ns, msg, master, read_addresses(ns, msg["index"]))


def read_links(ns):
    """Every link of ``ns`` as ``{name: describe_link dict}``, from one dump of the links and
    one of the addresses (a namespace of hundreds of links costs two netlink calls)."""
    messages = ns.call("listing interfaces", ns.ipr.get_links)
    names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in messages}
    addresses = {}
    for msg in ns.call("reading addresses", ns.ipr.get_addr):
        cidr = _address_of(msg)
        if cidr:
            addresses.setdefault(msg["index"], set()).add(cidr)
    return {
        names[msg["index"]]: _link_view(
            ns,
            msg,
            names.get(msg.get_attr("IFLA_MASTER")),
            sorted(addresses.get(msg["index"], ()), key=cidr_sort_key),
        )
        for msg in messages
    }


def link_names(ns):
    """``{ifindex: name}`` of the links of ``ns``."""
    return {
        msg["index"]: msg.get_attr("IFLA_IFNAME")
        for msg in ns.call("listing interfaces", ns.ipr.get_links)
    }


def read_namespace(ns):
    """Links and addresses of ``ns``, for validating routes against it:
    ``({ifindex: name}, [(name, "addr/prefix"), ...])``."""
    links = link_names(ns)
    addresses = []
    for msg in ns.call("reading addresses", ns.ipr.get_addr):
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if address and msg["index"] in links:
            addresses.append((links[msg["index"]], f"{address}/{msg['prefixlen']}"))
    return links, addresses


def namespace_routes(ns, tables=None, names=None):
    """The canonical unicast routes of ``ns`` (``routes.read_routes``), optionally only of the
    given tables; ``names`` is ``link_names(ns)`` when the caller has it already."""
    if names is None:
        names = link_names(ns)
    return ns.call("reading routes", read_routes, ns.ipr, names, tables)


def lower_name(link, link_ns, parent_ns, parent_names):
    """Name of the lower device of ``link`` (in ``link_ns``: a VLAN's parent, a macvlan's
    lower device) when that device lives in ``parent_ns`` (``parent_names``:
    ``link_names(parent_ns)``), else a description such as ``link #7 of another namespace``."""
    index = link.get("link_index")
    if not index:
        return None
    if link_ns.same_as(parent_ns):
        in_parent_ns = link.get("link_netnsid") is None
    else:
        nsid = netnsid_of(link_ns, parent_ns)
        in_parent_ns = nsid is not None and link.get("link_netnsid") == nsid
    if in_parent_ns and index in parent_names:
        return parent_names[index]
    return f"link #{index} of another namespace"


def veth_paired(ns, end, pns, peer_end):
    """True if ``end`` (in ``ns``) and ``peer_end`` (in ``pns``) are the two ends of one veth:
    each refers to the other's ifindex, in the right namespace."""
    if not end or not peer_end or end["kind"] != "veth" or peer_end["kind"] != "veth":
        return False
    if end["link_index"] != peer_end["ifindex"] or peer_end["link_index"] != end["ifindex"]:
        return False
    if ns.same_as(pns):
        return end["link_netnsid"] is None and end["ifindex"] != peer_end["ifindex"]
    nsid = netnsid_of(ns, pns)
    return nsid is not None and end["link_netnsid"] == nsid


def namespace_state(path, ns=None):
    """The name ``path``: whether it exists, whether it is a live namespace, its inode and the
    state of its ``lo`` (see ``namespace.plan_namespace``), read through ``ns`` when the
    caller has it open already."""
    inode = netns_inode(path)
    loopback = None
    if inode is not None and ns is not None:
        lo = find_link(ns, "lo")
        loopback = None if lo is None else ("up" if lo["flags"] & IFF_UP else "down")
    elif inode is not None:
        loopback = loopback_state(path)
    return dict(exists=os.path.lexists(path), live=inode is not None, inode=inode,
                loopback=loopback)  # fmt: skip


def loopback_state(path):
    """``up``/``down`` of ``lo`` in the namespace at ``path``, or None if it cannot be read."""
    if not is_netns_file(path):
        return None
    with open_netns(path, "name") as ns:
        lo = find_link(ns, "lo")
        if lo is None:
            return None
        return "up" if lo["flags"] & IFF_UP else "down"


def read_link(ns, name):
    """The normalised dict (see ``describe_link``) of ``name`` in ``ns``, or None if absent."""
    msg = find_link(ns, name)
    return describe_link(ns, msg) if msg is not None else None


def create_link(ns, rollback, ifname, kind, alias=OWNER_TAG, target=None, **attrs):
    """Create link ``ifname`` of ``kind`` (extra IFLA attributes in ``attrs``, e.g.
    ``peer={...}`` or ``br_stp_state=0``), tag it with ``alias`` (None: no tag), register its
    deletion on ``rollback`` and return its ifindex.

    The link is made from ``ns`` (where its lower device is) and lives there, or with
    ``target`` directly inside that namespace: then it is made under a temporary name and
    renamed inside ``target``, because the kernel checks a new link's name against ``ns`` too
    (a tenant's ``eth0`` could not be made from a host that has an ``eth0`` of its own)."""
    where = target or ns
    name = ifname
    if target is not None:
        name = temp_ifname("tnm")
        attrs["net_ns_fd"] = target.fd
    action = f"creating {kind} '{ifname}'"
    ns.call(
        action + (f" for {target.label}" if target else ""),
        ns.ipr.link,
        "add",
        ifname=name,
        kind=kind,
        **attrs,
    )
    # The undo step is registered before anything else can fail, the lookup by name included:
    # until the ifindex is known it deletes whatever carries the name the link was made with.
    created = {}

    def undo():
        index = created.get("index")
        if index is None:
            msg = find_link(where, name)
            if msg is None:
                return
            index = msg["index"]
        delete_link(where, index, ifname)

    rollback.push(f"{action} in {where.label}", undo)
    msg = find_link(where, name)
    if msg is None:
        raise ModuleFailure(f"the new {kind} '{ifname}' did not appear in {where.label}")
    index = created["index"] = msg["index"]
    change = {"ifname": ifname} if name != ifname else {}
    if alias:
        change["ifalias"] = alias
    if change:
        set_link(where, index, name, **change)
    return index


def set_link(ns, index, current_name, **attrs):
    """Change attributes of link ``index`` (``mtu``, ``address``, ``ifname``, ``master``,
    ``state='up'|'down'``, ``ifalias``, ``kind='bridge', br_*``...)."""
    what = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()) if k != "kind")
    ns.call(f"setting {what} on '{current_name}'", ns.ipr.link, "set", index=index, **attrs)


def set_mtu(ns, msg, ifname, mtu):
    """Set the MTU of link ``msg`` (named ``ifname``) so that the kernel keeps it.

    A bridge follows the smallest MTU of its ports (``br_mtu_auto_adjust``) unless its MTU was
    set by the user, and the kernel records that only when the MTU actually changes
    (``br_change_mtu`` sets BROPT_MTU_SET_BY_USER, while ``dev_set_mtu`` returns early for an
    equal value; net/bridge/br_device.c, net/core/dev.c). So a bridge MTU equal to the current
    one (1500 on a new bridge) is first moved by one and back: then a port with MTU 9000 does
    not raise it."""
    index = msg["index"]
    if link_kind(msg) == "bridge" and msg.get_attr("IFLA_MTU") == mtu:
        set_link(ns, index, ifname, mtu=mtu - 1 if mtu > MTU_MIN else mtu + 1)
    set_link(ns, index, ifname, mtu=mtu)


def delete_link(ns, index, ifname):
    """Delete link ``index``; a link that is already gone is not an error."""
    ns.call(f"deleting '{ifname}'", ns.ipr.link, "del", index=index, ignore=(errno.ENODEV,))


def _change_address(ns, op, what, index, cidr, ignore):
    iface = ipaddress.ip_interface(cidr)
    ns.call(
        what,
        ns.ipr.addr,
        op,
        index=index,
        address=str(iface.ip),
        prefixlen=iface.network.prefixlen,
        ignore=ignore,
    )


def add_address(ns, index, ifname, cidr):
    """Add CIDR address ``cidr`` to link ``index``. Returns True if it was added, False if the
    link carries it already (same prefix length). The same address under another prefix
    length (the kernel answers EEXIST for an IPv6 one) fails with a sentence saying so."""
    what = f"adding {cidr} to '{ifname}'"
    try:
        _change_address(ns, "add", what, index, cidr, ())
    except ModuleFailure as failure:
        if failure.extra.get("errno") != errno.EEXIST:
            raise
        if cidr in read_addresses(ns, index):
            return False
        ip = str(ipaddress.ip_interface(cidr).ip)
        held = [a for a in read_addresses(ns, index) if a.split("/")[0] == ip]
        where = f"'{ifname}' in {ns.label}"
        if held:
            raise ModuleFailure(
                f"{what} failed: {where} already holds {ip} as {', '.join(held)}, with another "
                "prefix length; the kernel keeps one prefix per IPv6 address, so remove that "
                "one first (purge_addresses: true replaces it)",
                errno=errno.EEXIST,
            ) from None
        raise
    return True


def remove_address(ns, index, ifname, cidr):
    """Remove CIDR address ``cidr`` from link ``index``; already absent is not an error."""
    ignore = (errno.EADDRNOTAVAIL, errno.ENODEV)
    _change_address(ns, "del", f"removing {cidr} from '{ifname}'", index, cidr, ignore)


def netnsid_of(ns, other):
    """The nsid by which namespace ``other`` is known inside ``ns`` (as reported in
    IFLA_LINK_NETNSID of cross-namespace links), or None if it has none."""
    try:
        reply = ns.ipr.get_netnsid(fd=other.fd)
    except (NetlinkError, OSError):
        return None
    if not reply:
        return None
    nsid = reply.get("nsid")
    return None if nsid is None or nsid < 0 else nsid


def links_with_master(ns, master_index):
    """Names of the links in ``ns`` enslaved to ``master_index`` (a bridge's ports), sorted."""
    names = []
    for msg in ns.call("listing links", ns.ipr.get_links):
        if msg.get_attr("IFLA_MASTER") == master_index:
            names.append(msg.get_attr("IFLA_IFNAME"))
    return sorted(names)
