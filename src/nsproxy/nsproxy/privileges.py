"""Credentials: the binder's few capabilities, and a worker's none at all.

A worker parses every tenant's bytes, so it runs with nothing a parser bug could hand over:
a user that is not root, no supplementary groups, every capability set empty (effective,
permitted, inheritable, ambient and the bounding set, so no later execve can regain one) and
``no_new_privs``. :func:`drop` does that in the order the kernel requires (capabilities(7):
the bounding set needs CAP_SETPCAP, so it is emptied while still privileged; leaving uid 0 with
setresuid clears the permitted and effective sets) and :func:`verify` reads the result back
from ``/proc/self/status``: a worker serves only if nothing is left.

The standard library has setresuid/setgroups but neither prctl nor capset; both are called
through ctypes here (python-prctl would do it too, but is not packaged for Debian 12).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import pwd

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: /proc/self/status fields that describe a process's privileges.
STATUS_FIELDS = (
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
)


class PrivilegeError(Exception):
    """Privileges could not be dropped, or something is left; the message is a sentence."""


class Credentials:
    """Who a worker runs as: ``uid``, ``gid`` (both non-zero) and the user ``name``."""

    __slots__ = ("gid", "name", "uid")

    def __init__(self, uid: int, gid: int, name: str):
        self.uid = uid
        self.gid = gid
        self.name = name

    def __repr__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def worker_credentials(user: str | None) -> Credentials:
    """The credentials of the workers for the config's ``user`` (a name or a decimal uid).

    None: ``nobody`` when the binder runs as root, else the binder's own user. Raises
    PrivilegeError naming ``user`` for an unknown user or for uid/gid 0 (a worker never runs
    as root, nor in group root, whose files it could read)."""
    if user is None:
        if os.geteuid() != 0:
            entry = _passwd(os.geteuid())
            return _checked(
                os.geteuid(), os.getegid(), entry.pw_name if entry else str(os.geteuid())
            )
        try:
            entry = pwd.getpwnam("nobody")
        except KeyError:
            return _checked(65534, 65534, "nobody")
        return _checked(entry.pw_uid, entry.pw_gid, "nobody")
    if user.isdigit():
        entry = _passwd(int(user))
        gid = entry.pw_gid if entry else int(user)
        return _checked(int(user), gid, entry.pw_name if entry else user)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user: there is no user {user!r} on this system") from None
    return _checked(entry.pw_uid, entry.pw_gid, user)


def _passwd(uid: int):
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _checked(uid: int, gid: int, name: str) -> Credentials:
    if uid == 0 or gid == 0:
        raise PrivilegeError(
            f"user: workers never run as root or in group root ({name} is uid {uid}, gid {gid}); "
            "name an unprivileged user"
        )
    return Credentials(uid, gid, name)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg2: int = 0) -> None:
    if _libc().prctl(option, ctypes.c_ulong(arg2), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _clear_capability_sets() -> None:
    """capset(2) with empty effective, permitted and inheritable sets (both 32-bit halves)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _empty_bounding_set() -> None:
    cap = 0
    while True:
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # past CAP_LAST_CAP: every capability is dropped
                return
            raise
        cap += 1


def drop(creds: Credentials) -> None:
    """Become ``creds`` with no capability in any set and no_new_privs; then :func:`verify`.

    Needs CAP_SETGID, CAP_SETUID and CAP_SETPCAP (the binder's, inherited through fork).
    Raises PrivilegeError with the step that failed or what is left."""
    steps = (
        ("setgroups([])", lambda: os.setgroups([])),
        (f"setresgid({creds.gid})", lambda: os.setresgid(creds.gid, creds.gid, creds.gid)),
        ("emptying the capability bounding set", _empty_bounding_set),
        (
            "clearing the ambient capabilities",
            lambda: _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL),
        ),
        (f"setresuid({creds.uid})", lambda: os.setresuid(creds.uid, creds.uid, creds.uid)),
        ("capset (empty sets)", _clear_capability_sets),
        ("prctl(PR_SET_NO_NEW_PRIVS)", lambda: _prctl(PR_SET_NO_NEW_PRIVS, 1)),
    )
    for what, step in steps:
        try:
            step()
        except OSError as exc:
            raise PrivilegeError(
                f"cannot drop privileges to {creds}: {what}: {exc.strerror or exc} (the binder "
                "needs CAP_SETUID, CAP_SETGID and CAP_SETPCAP to start workers)"
            ) from None
    verify(creds)


def status(pid: int | str = "self") -> dict[str, str]:
    """The privilege fields of /proc/PID/status (see :data:`STATUS_FIELDS`), as text."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                fields[name] = " ".join(value.split())
    return fields


def verify(creds: Credentials) -> None:
    """Raise PrivilegeError unless this process is ``creds`` (real, effective, saved and
    filesystem ids), has no supplementary group, no capability in any set and no_new_privs."""
    fields = status()
    left = []
    for name in ("Uid", "Gid"):
        want = creds.uid if name == "Uid" else creds.gid
        if {int(v) for v in fields.get(name, "0").split()} != {want}:
            left.append(f"{name} {fields.get(name)}")
    if fields.get("Groups", ""):
        left.append(f"Groups {fields['Groups']}")
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(fields.get(name, "1"), 16) != 0:
            left.append(f"{name} {fields.get(name)}")
    if fields.get("NoNewPrivs") != "1":
        left.append(f"NoNewPrivs {fields.get('NoNewPrivs')}")
    if left:
        raise PrivilegeError(f"privileges left after dropping to {creds}: {', '.join(left)}")


def forbid_ptrace() -> None:
    """PR_SET_DUMPABLE 0 for the binder: no process of another user (a worker included) can
    ptrace it, read its memory or open its /proc/PID files; no core dump holds its keys."""
    _prctl(PR_SET_DUMPABLE, 0)
