# Copyright: tenantnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one netlink layer of tenantnet.nsproxy: every module talks to the kernel through here.

Works with pyroute2 0.7.x (Debian 12's python3-pyroute2) and 0.9.x (PyPI). Namespaces are opened
the same way on both: open the namespace file read-only (so nothing can ever be created by
accident), ``setns`` into it only long enough to create the netlink socket, and return. The
socket keeps the namespace it was made in; the fd of the namespace stays open so it can be
passed as ``net_ns_fd`` (the 0.7 ``NetNS`` proxy process and the 0.9 ``flags=O_CREAT`` default
are both avoided).

Every kernel error becomes ModuleFailure with a sentence (see ``common.errno_sentence``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import traceback
import uuid

from ansible_collections.tenantnet.nsproxy.plugins.module_utils.common import (
    NETNS_DIR,
    OWNER_TAG,
    ModuleFailure,
    ParamError,
    cidr_sort_key,
    errno_sentence,
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
            raise ParamError(
                field,
                f"network namespace '{spec}' does not exist ({path} not found); "
                "create or attach it first, e.g. with tenantnet.nsproxy.netns",
            ) from None
        raise ParamError(field, f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(handle.fd)
    if st.st_dev != _nsfs_dev():
        handle.close()
        raise ParamError(
            field,
            f"{path} exists but is not a network namespace (a stale name whose namespace "
            "is gone?); remove it or attach it again with tenantnet.nsproxy.netns",
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


class NetnsSet:
    """Opens each distinct namespace once and closes them all at the end (a module may touch
    two: ``netns`` and ``peer_netns``). ``get(spec, field)`` returns a Netns."""

    def __init__(self, netns_dir=NETNS_DIR):
        self.netns_dir = netns_dir
        self._open = {}

    def get(self, spec, field="netns"):
        key = netns_path(spec, field, self.netns_dir)
        if key not in self._open:
            self._open[key] = open_netns(spec, field, self.netns_dir)
        return self._open[key]

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


def read_addresses(ns, index):
    """Addresses of link ``index`` as canonical CIDR strings, sorted IPv4 first. IPv6
    link-local (fe80::/10) addresses are left out: the kernel manages them."""
    result = []
    for msg in ns.call("reading addresses", ns.ipr.get_addr, index=index):
        if msg.get("index") != index:
            continue
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if not address:
            continue
        cidr = str(ipaddress.ip_interface("{}/{}".format(address, msg["prefixlen"])))
        if ipaddress.ip_interface(cidr).ip.is_link_local and ":" in cidr:
            continue
        if cidr not in result:
            result.append(cidr)
    return sorted(result, key=cidr_sort_key)


def describe_link(ns, msg):
    """Normalise a link message into the JSON-serialisable dict every module returns:
    name, ifindex, kind, mtu, mac (lower case), operstate, state (admin up/down), addresses
    (CIDR), master (name), alias, owned (alias is the collection tag), netns, link_index and
    link_netnsid (peer/parent reference) and kind_data."""
    index = msg["index"]
    master_index = msg.get_attr("IFLA_MASTER")
    master = None
    if master_index:
        master_msg = find_link_by_index(ns, master_index)
        master = master_msg.get_attr("IFLA_IFNAME") if master_msg is not None else None
    mac = msg.get_attr("IFLA_ADDRESS")
    alias = msg.get_attr("IFLA_IFALIAS")
    return {
        "name": msg.get_attr("IFLA_IFNAME"),
        "ifindex": index,
        "kind": link_kind(msg),
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": mac.lower() if mac else None,
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "state": "up" if msg["flags"] & IFF_UP else "down",
        "addresses": read_addresses(ns, index),
        "master": master,
        "alias": alias,
        "owned": alias == OWNER_TAG,
        "netns": ns.spec or None,
        "link_index": msg.get_attr("IFLA_LINK"),
        "link_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        "kind_data": dict((k, _plain(v)) for k, v in link_kind_data(msg).items()),
    }


def read_link(ns, name):
    """The normalised dict (see ``describe_link``) of ``name`` in ``ns``, or None if absent."""
    msg = find_link(ns, name)
    return describe_link(ns, msg) if msg is not None else None


def create_link(ns, rollback, ifname, kind, tag=True, target=None, **attrs):
    """Create link ``ifname`` of ``kind`` (extra IFLA attributes in ``attrs``, e.g.
    ``peer={...}`` or ``br_stp_state=0``), tag it with OWNER_TAG, register its deletion on
    ``rollback`` and return its ifindex.

    The link is made from ``ns`` (where its lower device is) and lives there, or with
    ``target`` directly inside that namespace: then it is made under a temporary name and
    renamed inside ``target``, because the kernel checks a new link's name against ``ns`` too
    (a tenant's ``eth0`` could not be made from a host that has an ``eth0`` of its own)."""
    where = target or ns
    name = ifname
    if target is not None:
        name = temp_ifname("tnm")
        attrs["net_ns_fd"] = target.fd
    ns.call(
        f"creating {kind} '{ifname}'" + (f" for {target.label}" if target else ""),
        ns.ipr.link,
        "add",
        ifname=name,
        kind=kind,
        **attrs,
    )
    msg = find_link(where, name)
    if msg is None:
        raise ModuleFailure(f"the new {kind} '{ifname}' did not appear in {where.label}")
    index = msg["index"]
    rollback.push(
        f"creating {kind} '{ifname}' in {where.label}", lambda: delete_link(where, index, ifname)
    )
    change = {"ifname": ifname} if name != ifname else {}
    if tag:
        change["ifalias"] = OWNER_TAG
    if change:
        set_link(where, index, name, **change)
    return index


def set_link(ns, index, current_name, **attrs):
    """Change attributes of link ``index`` (``mtu``, ``address``, ``ifname``, ``master``,
    ``state='up'|'down'``, ``ifalias``, ``kind='bridge', br_*``...)."""
    what = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()) if k != "kind")
    ns.call(f"setting {what} on '{current_name}'", ns.ipr.link, "set", index=index, **attrs)


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
    """Add CIDR address ``cidr`` to link ``index``; already present is not an error."""
    _change_address(ns, "add", f"adding {cidr} to '{ifname}'", index, cidr, (errno.EEXIST,))


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


def _index_of(ns, ifname):
    msg = find_link(ns, ifname)
    if msg is None:
        raise ModuleFailure(f"interface '{ifname}' disappeared from {ns.label} meanwhile")
    return msg["index"]


def apply_link_action(nsset, action, rollback=None):
    """Execute one planned action whose ``op`` is ``link_set`` (mtu, mac, master, state, ...),
    ``addr_add``, ``addr_del`` or ``link_del`` on ``action['ifname']`` in
    ``nsset.get(action['netns'])``. Interfaces are looked up by name at apply time, since a
    move or rename changes the index. Return True if the op was handled here."""
    op = action["op"]
    if op not in ("link_set", "addr_add", "addr_del", "link_del"):
        return False
    ns = nsset.get(action.get("netns"))
    ifname = action["ifname"]
    index = _index_of(ns, ifname)
    if op == "link_set":
        attrs = {}
        for key, value in action.items():
            if key in ("op", "ifname", "netns"):
                continue
            if key == "mac":
                attrs["address"] = value
            elif key == "master":
                attrs["master"] = _index_of(ns, value) if value else 0
            else:
                attrs[key] = value
        set_link(ns, index, ifname, **attrs)
    elif op == "addr_add":
        add_address(ns, index, ifname, action["address"])
        if rollback is not None:
            rollback.push(
                f"adding {action['address']} to '{ifname}'",
                lambda: remove_address(ns, _index_of(ns, ifname), ifname, action["address"]),
            )
    elif op == "addr_del":
        remove_address(ns, index, ifname, action["address"])
    elif op == "link_del":
        delete_link(ns, index, ifname)
    return True
