"""SIGHUP and SIGUSR1 that come before the binder serves: held, then acted on once it does.

From ``nsproxy run`` starting to the binder's own handlers being in place (reading and checking
the config, binding every listener, starting the workers: seconds at thousands of tenants), the
default action of both signals is to end the process (signal(7)), taking every tenant with it. A
reload sent by an operator, or logrotate's postrotate SIGUSR1, must not do that. So ``hold()``
runs first in ``nsproxy run`` and notes them; ``release()`` hands them, in the order they first
came and once each, to the binder as it begins serving: a SIGHUP then reloads (the config may
have changed after it was read) and a SIGUSR1 reopens the logs.

An upgrade re-executes the binder in the same process. ``block_for_exec()`` blocks both signals
before ``execve``: the mask and pending signals survive it (execve(2)), and ``hold()`` unblocks
them once its handlers are in place, so none is lost or fatal across the exec either.

SIGTERM and SIGINT are not held: before serving, stopping at once is what the sender wants.
"""

from __future__ import annotations

import signal

HELD = (signal.SIGHUP, signal.SIGUSR1)
_came: list[int] = []


def _note(signum: int, _frame) -> None:
    if signum not in _came:
        _came.append(signum)


def hold() -> None:
    """Note HELD signals from now on instead of dying of them (and take any blocked across an
    upgrade's exec)."""
    for signum in HELD:
        signal.signal(signum, _note)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def release() -> list[int]:
    """The HELD signals that came since ``hold()``, oldest first, each once; forgotten here.
    Call after the binder's own handlers replace ours."""
    came = list(_came)
    _came.clear()
    return came


def block_for_exec() -> None:
    """Block HELD until the re-executed binder's ``hold()`` (an upgrade, just before execve)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def unblock() -> None:
    """Undo ``block_for_exec()`` when the execve failed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
