"""Steering new connections within a listener's SO_REUSEPORT group while it shrinks.

Each listener is a group of sockets, one per worker index (binder/listeners.py). The kernel
gives a new connection to one live socket of the group, by a secret-keyed hash, so a socket
leaves the group only by being closed, and closing a listening socket resets the connections
still queued there: accepted by the kernel, not yet by the worker, and with TCP_DEFER_ACCEPT
every connection whose first bytes have not arrived yet. That is what lowering ``workers`` at a
reload did: from 3 workers to 2, what was queued at the third socket of every listener.

So a shrink goes in two steps. :func:`steer` attaches a classic BPF program to the group
(SO_ATTACH_REUSEPORT_CBPF, socket(7)) that picks one of its first ``width`` sockets at random;
the sockets beyond get no new connection, and their workers accept what is queued there before
they close them. Once they have, :func:`unsteer` detaches the program (SO_DETACH_REUSEPORT_BPF,
Linux 5.3) and the kernel's keyed hash is back. The program returns a *position* in the group:
the kernel keeps the sockets in the order they started listening and moves the last one into
the place of one that leaves (net/core/sock_reuseport.c, ``__reuseport_detach_sock``), so the
binder keeps every socket of the group open, in index order, until it detaches the program.
A random pick rather than a hash of the client's address and port: a client that chooses its
source ports could otherwise choose its worker.

The net.ipv4.tcp_migrate_req sysctl (Linux 5.14) would move queued connections instead, but it
belongs to each tenant's namespace, and /proc/sys is read-only under the role's unit
(ProtectKernelTunables). No maintained Python library assembles classic BPF for reuseport
groups; the program is 3 instructions, written out here.
"""

from __future__ import annotations

import ctypes
import errno
import socket

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
SO_DETACH_REUSEPORT_BPF = 68
# Classic BPF (linux/filter.h): A = prandom_u32(); A %= width; return A.
_LD_W_ABS = 0x20
_ALU_MOD_K = 0x94
_RET_A = 0x16
_SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM, as u32


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Instruction))]


def program(width: int) -> list[tuple[int, int, int, int]]:
    """The instructions (code, jt, jf, k) that return a random socket position in
    ``[0, width)``. Raises ValueError if ``width`` < 1."""
    if width < 1:
        raise ValueError(f"reuseport program: width {width}, at least 1 socket is needed")
    return [(_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_ALU_MOD_K, 0, 0, width), (_RET_A, 0, 0, 0)]


def steer(sock: socket.socket, width: int) -> None:
    """Give the new connections of ``sock``'s SO_REUSEPORT group to its first ``width``
    sockets only (replacing any program attached before). Raises OSError from setsockopt."""
    instructions = program(width)
    array = (_Instruction * len(instructions))(*(_Instruction(*i) for i in instructions))
    prog = _Program(len(instructions), ctypes.cast(array, ctypes.POINTER(_Instruction)))
    # The kernel copies the program during the call; `array` is alive until it returns.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(prog))


def unsteer(sock: socket.socket) -> None:
    """Detach the group's program: every live socket gets new connections again. No program
    attached is not an error. Raises OSError from setsockopt otherwise."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
