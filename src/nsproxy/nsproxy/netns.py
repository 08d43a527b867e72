"""Network namespaces: the only module of nsproxy that calls setns.

Everything that needs CAP_SYS_ADMIN is here and small: open a namespace file once, and create a
socket inside it (setns, socket, [bind, listen], setns back) with nothing else in between and
never across an ``await``. The rest of the proxy gets plain socket objects and never switches
namespace. A privilege-separated helper would wrap exactly :func:`listening_socket` and
:func:`unconnected_socket` and hand the fds back over SCM_RIGHTS.

If the calling thread cannot return to its home namespace the process exits at once: serving
from the wrong namespace would cross tenants.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
EXIT_NETNS_RESTORE_FAILED = 70

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
    """A namespace could not be opened or entered; the message is a full sentence."""


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

    def acquire(self, netns: str) -> Namespace:
        """Open (or share) the namespace named by ``netns``; raise NetnsError with the reason."""
        path = ns_path(netns)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsError(f"network namespace {path} does not exist") from None
        except OSError as exc:
            raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from None
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

    # -- the two privileged operations -----------------------------------------------------
    def listening_socket(
        self, ns: Namespace | None, host: str, port: int, backlog: int = 1024
    ) -> socket.socket:
        """A TCP socket bound and listening on host:port inside ``ns`` (None: home namespace)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if ns is None:
            return _bind_listen(family, host, port, backlog)
        self._enter(ns)
        try:
            return _bind_listen(family, host, port, backlog)
        finally:
            self._return_home()

    def unconnected_socket(self, ns: Namespace | None, family: int) -> socket.socket:
        """A non-blocking TCP socket created inside ``ns``; connect it from the event loop."""
        if ns is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
        else:
            self._enter(ns)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            finally:
                self._return_home()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def _bind_listen(family: int, host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
