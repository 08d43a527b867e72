"""Run a check in a forked child that has become another user, as a worker does."""

from __future__ import annotations

import os


def passes_as_nobody(check) -> bool:
    """Whether ``check()`` returns without raising in a child of this process that dropped to
    uid and gid 65534 with no supplementary group (what privileges.drop leaves of a worker,
    capabilities aside: the test runs as root, the child keeps none after setresuid)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            check()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
