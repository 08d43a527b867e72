"""Process titles: what ``ps`` and ``top`` show for the binder and each worker.

``setproctitle`` (PyPI, Debian python3-setproctitle) rewrites the argument area, so ``ps -o
args`` shows e.g. ``nsproxy: binder main`` or ``nsproxy: worker 1 main``; on Linux it sets the
15-byte ``comm`` (prctl PR_SET_NAME) as well. Without it, only ``comm`` is set, through libc's
prctl, which is still better than every process showing as ``python3``.
"""

from __future__ import annotations

import ctypes

PR_SET_NAME = 15  # prctl(2)


def set_title(title: str) -> bool:
    """Show ``title`` for this process; True when the whole title is visible (setproctitle),
    False when only ``comm`` (its first 15 bytes) or nothing could be set."""
    try:
        import setproctitle
    except ImportError:
        setproctitle = None
    if setproctitle is not None:
        setproctitle.setproctitle(title)
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return False


def binder_title(instance: str) -> str:
    return f"nsproxy: binder {instance}"


def worker_title(index: int, instance: str) -> str:
    return f"nsproxy: worker {index} {instance}"
