"""Network-namespace helpers of the benchmark: enter a tenant namespace for a moment, and
probe many tenants' listeners at once.

Only this module calls setns. Every switch is "enter, one short synchronous action, restore"
with nothing in between; if the restore fails the process exits rather than go on in the
wrong namespace (everything else of the harness assumes the host namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import socket
import time
from typing import Callable

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Namespaces:
    """Open handles on named tenant namespaces (under /run/netns) and the caller's own one."""

    def __init__(self) -> None:
        self._host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._fds: dict[str, int] = {}

    def fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[name]

    def inode(self, name: str) -> int:
        return os.fstat(self.fd(name)).st_ino

    @contextlib.contextmanager
    def inside(self, name: str):
        """Run the body in namespace ``name``; the body must not block, fork or spawn."""
        _setns(self.fd(name))
        try:
            yield
        finally:
            try:
                _setns(self._host)
            except OSError:
                os._exit(70)

    def socket(self, name: str | None) -> socket.socket:
        """A TCP socket created inside namespace ``name`` (None: the caller's own)."""
        if name is None:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with self.inside(name):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._host)


def wait_listening(
    namespaces: Namespaces,
    targets: list[tuple[str | None, str, int]],
    timeout: float,
    interval: float = 0.002,
    alive: Callable[[], None] | None = None,
) -> dict[tuple[str | None, str, int], float]:
    """Wait until every (netns, address, port) in ``targets`` completes a TCP handshake
    (netns None: the caller's own namespace).

    Returns, per target, the ``time.monotonic()`` at which it was first seen accepting;
    raises TimeoutError naming how many still refuse after ``timeout`` seconds. ``alive`` is
    called between rounds and may raise to stop waiting (e.g. the server exited).
    """
    pending = set(targets)
    deadline = time.monotonic() + timeout
    accepted: dict[tuple[str | None, str, int], float] = {}
    while pending:
        sel = selectors.DefaultSelector()
        opened = []
        for target in pending:
            ns, addr, port = target
            sock = namespaces.socket(ns)
            sock.setblocking(False)
            opened.append(sock)
            err = sock.connect_ex((addr, port))
            if err in (0, errno.EINPROGRESS):
                sel.register(sock, selectors.EVENT_WRITE, target)
        done = set()
        wait_until = time.monotonic() + 0.5
        while sel.get_map() and time.monotonic() < wait_until:
            for key, _ in sel.select(timeout=0.05):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.add(key.data)
                    accepted[key.data] = time.monotonic()
        sel.close()
        for sock in opened:
            sock.close()
        pending -= done
        if pending:
            if alive:
                alive()
            if time.monotonic() > deadline:
                shown = sorted(pending, key=str)[:5]
                sample = ", ".join(f"{ns or 'host'} {a}:{p}" for ns, a, p in shown)
                raise TimeoutError(
                    f"{len(pending)} listener(s) still not accepting after {timeout:.0f} s "
                    f"(e.g. {sample})"
                )
            time.sleep(interval)
    return accepted
