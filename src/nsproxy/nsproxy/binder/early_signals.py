"""SIGHUP and SIGUSR1 that come before the binder serves: held, then acted on once it does.

From ``nsproxy run`` starting to the binder's own handlers being in place (reading and checking
the config, binding every listener, starting the workers: seconds at thousands of tenants), the
default action of both signals is to end the process (signal(7)), taking every tenant with it. A
reload sent by an operator, or logrotate's postrotate SIGUSR1, must not do that. So ``hold()``
runs first in ``nsproxy run`` and notes them; ``release()`` hands them, in the order they first
came and once each, to the binder as it begins serving: a SIGHUP then reloads (the config may
have changed after it was read) and a SIGUSR1 reopens the logs.

Before ``hold()`` (the interpreter starting, about 0.1 s) nothing can catch them; what can be
done is to start the process with them ignored, as a disposition of SIG_IGN survives execve
(execve(2)) and ``hold()`` replaces it. ``ignore_for_exec()`` does that for an upgrade, which
re-executes the binder in the same process; nsproxy-supervisor does it for every start. An
ignored signal is lost, which is harmless there: the process has not yet read its file or
opened its logs. Blocking them instead would keep them, but a build without ``hold()`` (a
rollback) would then never see a SIGHUP again.

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
    """Note HELD signals from now on instead of dying of (or ignoring) them."""
    for signum in HELD:
        signal.signal(signum, _note)


def release() -> list[int]:
    """The HELD signals that came since ``hold()``, oldest first, each once; forgotten here.
    Call with HELD blocked, once the binder's own handlers replace ours (binder/main.py)."""
    came = list(_came)
    _came.clear()
    return came


def ignore_for_exec() -> dict:
    """Ignore HELD until the re-executed binder's ``hold()`` (an upgrade, just before execve);
    the handlers they had, for ``restore()`` should the execve fail."""
    return {signum: signal.signal(signum, signal.SIG_IGN) for signum in HELD}


def restore(handlers: dict) -> None:
    """Undo ``ignore_for_exec()``."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
