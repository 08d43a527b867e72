"""Network namespaces: the only module of nsproxy that calls setns.

Everything that needs CAP_SYS_ADMIN is here and small: open a namespace file once, and create a
socket inside it (setns, socket, [bind, listen], setns back) with nothing else in between and
never across an ``await``. Only the binder calls it; it hands the sockets to the workers over
SCM_RIGHTS, and they never switch namespace (they could not: they hold no capability).

Namespace identity: a namespace is known by (st_dev, st_ino) of its file, never by its name.
A name under /run/netns (or any other path) that comes to mean a new namespace gives a new
``Namespace``. A ``/proc/PID/ns/net`` path names the namespace of one process: it is pinned to
that process when opened (a pidfd, pidfd_open(2), taken before the file is opened and checked
after it, plus the process's start time from /proc/PID/stat), so that it is never followed to
another process that gets the same PID later; the pidfd becomes readable when the process exits.

If the calling thread cannot return to its home namespace the process exits at once: serving
from the wrong namespace would cross tenants.
"""

from __future__ import annotations

import ctypes
import os
import posixpath
import re
import select
import socket
import sys

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
EXIT_NETNS_RESTORE_FAILED = 70
# rtnetlink(7) multicast groups: address added or removed, IPv4 and IPv6
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
_PROC_PID = re.compile(r"^/proc/([1-9][0-9]{0,9})(?:/|$)")

if hasattr(os, "setns"):  # Python 3.12+

    def _setns(fd: int) -> None:
        os.setns(fd, CLONE_NEWNET)

else:
    _libc = ctypes.CDLL(None, use_errno=True)

    def _setns(fd: int) -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


class NetnsError(Exception):
    """A namespace could not be opened or entered; the message is a full sentence. ``gone``:
    the process a /proc/PID path goes through has exited (or its PID is another process's),
    so the path is not followed any more. ``process``: (pid, start time) of the live process
    such a path went through when only its file was missing (the caller keeps it, to follow
    the path through that process alone)."""

    def __init__(self, message: str, gone: bool = False):
        super().__init__(message)
        self.gone = gone
        self.process: tuple[int, int] | None = None


def ns_path(netns: str) -> str:
    """The file of a namespace given by name (under /run/netns) or by absolute path."""
    return netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)


class Namespace:
    """An open namespace file: fd (O_CLOEXEC) plus its identity (st_dev, st_ino)."""

    __slots__ = ("fd", "identity", "path", "refs")

    def __init__(self, path: str, fd: int, identity: tuple[int, int]):
        self.path = path
        self.fd = fd
        self.identity = identity
        self.refs = 0

    @property
    def inode(self) -> int:
        return self.identity[1]


def pinned_pid(netns: str) -> int | None:
    """The PID of the other process through whose /proc/PID the path ``netns`` goes, else
    None: ``/proc/PID/ns/net``, ``/proc/PID/task/TID/ns/net``, ``/proc/PID/fd/N``,
    ``/proc/PID/root/run/netns/x``, in any spelling (``//proc/PID/ns/net``,
    ``/proc/PID/./ns/net``, ``/proc/self/root/proc/PID/ns/net``, a symbolic link of the
    operator's to one of them). Such a path names something else once PID is reused, so the
    caller pins it to the process (``Registry.acquire``) and never follows it past that
    process's life. Whether it is followed while the process lives: :func:`follows`.

    The path is followed one component at a time: symbolic links are resolved as this
    process sees them (``/var/run``, ``/proc/self``) up to the first /proc/PID of another
    process, past which resolving is meaningless here (its ``root``, ``cwd`` and ``fd`` are
    that process's view). The last component, a namespace's own magic link, is not resolved."""
    through = _through_proc(netns)
    return through[0] if through is not None else None


def follows(netns: str) -> bool:
    """Whether the namespace behind the path ``netns`` is looked up again when the file
    changes: True for a named namespace and for a path into another process's files
    (``/proc/PID/root/run/netns/x``, ``/proc/PID/fd/N``: the file may come, go or be replaced
    while the process lives); False for a process's own namespace link
    (``/proc/PID/ns/net``, ``/proc/PID/task/TID/ns/net``), which is opened once and kept for
    the life of the process."""
    through = _through_proc(netns)
    if through is None:
        return True
    rest = through[1]
    own = rest[2:] if len(rest) == 4 and rest[0] == "task" and rest[1].isdigit() else rest
    return own != ["ns", "net"]


def _through_proc(netns: str) -> tuple[int, list[str]] | None:
    """(PID, the components after /proc/PID) for a path through another process's /proc/PID
    (see :func:`pinned_pid`), else None."""
    me = os.getpid()
    parts = [part for part in netns.split("/") if part not in ("", ".")]
    current = "/"
    for index, part in enumerate(parts):
        current = posixpath.normpath(posixpath.join(current, part))
        if index < len(parts) - 1 and os.path.islink(current):
            current = os.path.realpath(current)
        match = _PROC_PID.match(current)
        if match and int(match.group(1)) != me:
            return int(match.group(1)), parts[index + 1 :]
    return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks after boot), None if no such PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class Pin:
    """The process a /proc/PID path was resolved through: ``pidfd`` (readable once it has
    exited), ``pid`` and its ``start_time``."""

    __slots__ = ("pid", "pidfd", "start_time")

    def __init__(self, pid: int, pidfd: int, start_time: int):
        self.pid = pid
        self.pidfd = pidfd
        self.start_time = start_time

    def exited(self) -> bool:
        if self.pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def current_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace now behind ``path``; None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Registry:
    """Open namespace files, shared by identity, reference counted.

    A path that now points to a new namespace (a container restart) gives a new ``Namespace``;
    the old one stays open until its last user releases it.
    """

    def __init__(self) -> None:
        # The home namespace is that of the thread that creates the registry (the loop thread).
        home = "/proc/thread-self/ns/net"
        self.home_fd = os.open(home, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.home_fd)
        self.home_identity = (st.st_dev, st.st_ino)
        self._by_identity: dict[tuple[int, int], Namespace] = {}

    def acquire(
        self, netns: str, process: tuple[int, int] | None = None
    ) -> tuple[Namespace, Pin | None]:
        """Open (or share) the namespace named by ``netns``: (namespace, pin). ``pin`` is the
        process a /proc/PID path goes through (the caller owns it), else None. ``process``:
        (pid, start time) of the process such a path was first pinned to; a PID that now
        belongs to another process is refused (``gone``). Raises NetnsError with the reason."""
        path = ns_path(netns)
        pid = pinned_pid(path)
        if pid is None:
            return self._open(path, path), None
        exited = f"process {pid} of {path} exited"
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NetnsError(f"process {pid} of {path} does not exist", gone=True) from None
        except OSError as exc:
            raise NetnsError(f"cannot pin process {pid} of {path}: {exc.strerror}") from None
        pin = Pin(pid, pidfd, process_start_time(pid) or 0)
        if process is not None and (pid, pin.start_time) != tuple(process):
            pin.close()
            raise NetnsError(exited, gone=True)
        try:
            ns = self._open(path, path)
        except NetnsError as exc:
            # Whether the process lived through the lookup (the PID was still its own)
            lived = not pin.exited() and process_start_time(pid) == pin.start_time != 0
            pin.close()
            if not lived:
                raise NetnsError(exited, gone=True) from None
            exc.process = (pid, pin.start_time)
            raise
        except BaseException:
            pin.close()
            raise
        # The file was opened while the pidfd's process held the PID: it is that process's.
        if pin.exited() or process_start_time(pid) != pin.start_time or not pin.start_time:
            self.release(ns)
            pin.close()
            raise NetnsError(f"{exited} while its namespace was opened", gone=True)
        return ns, pin

    def adopt(self, path: str, fd: int) -> Namespace:
        """Take an open namespace fd over (one inherited across an upgrade's execve)."""
        return self._open(path, f"/proc/self/fd/{fd}", fd)

    def _open(self, path: str, source: str, fd: int | None = None) -> Namespace:
        if fd is None:
            try:
                # Non-blocking: a FIFO at the path would hold the binder in open() (for a
                # namespace file the flag changes nothing); _is_netns refuses it below.
                fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NetnsError(f"network namespace {path} does not exist") from None
            except OSError as exc:
                raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from None
        os.set_inheritable(fd, False)
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        ns = self._by_identity.get(identity)
        if ns is not None:
            os.close(fd)
        else:
            if not _is_netns(fd):
                os.close(fd)
                raise NetnsError(f"{path} is not a network namespace")
            ns = Namespace(path, fd, identity)
            self._by_identity[identity] = ns
        ns.refs += 1
        return ns

    def release(self, ns: Namespace) -> None:
        """Drop one reference; the fd is closed with the last one (so a dead netns can go)."""
        ns.refs -= 1
        if ns.refs <= 0 and self._by_identity.get(ns.identity) is ns:
            del self._by_identity[ns.identity]
            os.close(ns.fd)

    def open_count(self) -> int:
        return len(self._by_identity)

    # -- the privileged operations ---------------------------------------------------------
    def listening_socket(
        self, ns: Namespace | None, host: str, port: int, backlog: int = 1024
    ) -> socket.socket:
        """A TCP socket bound and listening on host:port inside ``ns`` (None: home namespace)."""
        return self.listening_sockets(ns, host, port, 1, backlog, reuseport=False)[0]

    def listening_sockets(
        self,
        ns: Namespace | None,
        host: str,
        port: int,
        count: int,
        backlog: int = 1024,
        reuseport: bool = True,
    ) -> list[socket.socket]:
        """``count`` TCP sockets listening on host:port inside ``ns`` (one namespace switch),
        in an SO_REUSEPORT group (socket(7)): the kernel spreads new connections over the
        group, one socket per worker; sockets made later for the same address join it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if ns is not None:
            self._enter(ns)
        socks: list[socket.socket] = []
        try:
            for _ in range(count):
                socks.append(_bind_listen(family, host, port, backlog, reuseport))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        finally:
            if ns is not None:
                self._return_home()
        return socks

    def unconnected_sockets(self, ns: Namespace, family: int, count: int) -> list[socket.socket]:
        """``count`` non-blocking TCP sockets created inside ``ns`` (one namespace switch);
        a worker connects them from its event loop."""
        socks: list[socket.socket] = []
        self._enter(ns)
        try:
            for _ in range(count):
                socks.append(socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        finally:
            self._return_home()
        return socks

    def address_watch(self, ns: Namespace) -> socket.socket:
        """A non-blocking NETLINK_ROUTE socket made inside ``ns`` that becomes readable when an
        address is added or removed there (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        rtnetlink(7)). Its messages come from the kernel; the binder only drains them."""
        self._enter(ns)
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
            )
        finally:
            self._return_home()
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except BaseException:
            sock.close()
            raise
        return sock

    def _enter(self, ns: Namespace) -> None:
        try:
            _setns(ns.fd)
        except OSError as exc:
            raise NetnsError(f"cannot enter network namespace {ns.path}: {exc.strerror}") from None

    def _return_home(self) -> None:
        try:
            _setns(self.home_fd)
        except BaseException as exc:
            sys.stderr.write(
                f"nsproxy: FATAL: cannot return to the home network namespace ({exc}); "
                "exiting rather than serving from the wrong namespace\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_NETNS_RESTORE_FAILED)


def _bind_listen(
    family: int, host: str, port: int, backlog: int, reuseport: bool = False
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_NS_GET_NSTYPE = 0xB703


def _is_netns(fd: int) -> bool:
    """Whether fd is a network namespace (ioctl NS_GET_NSTYPE, Linux 4.11+).

    False for anything else, including a stale plain file left under /run/netns (the ioctl
    fails on it): such a tenant is reported as waiting, never entered.
    """
    import fcntl

    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
